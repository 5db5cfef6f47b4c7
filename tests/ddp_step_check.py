"""Run by tests/test_reliability.py: one hand-written SGD step under 2-process CPU DDP (gloo), weights saved.

    python tests/ddp_step_check.py OUT.pt DATA_DIR
"""

import sys

import lightning as L
import torch

from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.model import SoftmaxRegression

if __name__ == "__main__":
    out, data_dir = sys.argv[1], sys.argv[2]
    L.seed_everything(0)
    model = SoftmaxRegression()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=FashionMNISTDataModule(data_dir=data_dir, seed=0))
    gathered = trainer.strategy.all_gather(torch.cat([model.W.detach().flatten(), model.b.detach()]))
    if trainer.is_global_zero:
        torch.save({"W": model.W.detach(), "b": model.b.detach(), "per_rank": gathered}, out)
