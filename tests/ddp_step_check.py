"""Run by tests/test_reliability.py: one hand-written SGD step under 2-process CPU DDP (gloo), weights saved.

python tests/ddp_step_check.py OUT.pt DATA_DIR
"""

import sys

import lightning as L
import torch

from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.model import SoftmaxRegression


class RankCheck(L.Callback):
    """Gathers every rank's weights and sample count at the end of training, while the model is still on its device
    (``all_gather`` on NCCL needs device tensors)."""

    def __init__(self) -> None:
        self.samples, self.gathered = 0, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += len(batch[1])

    def on_train_end(self, trainer, pl_module) -> None:
        weights = torch.cat([pl_module.W.detach().flatten(), pl_module.b.detach()])
        self.gathered = {
            "per_rank": trainer.strategy.all_gather(weights),
            "samples_per_rank": trainer.strategy.all_gather(torch.tensor(self.samples, device=pl_module.device)),
        }


if __name__ == "__main__":
    out, data_dir = sys.argv[1], sys.argv[2]
    L.seed_everything(0)
    model, check = SoftmaxRegression(), RankCheck()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[check],
    )
    trainer.fit(model, datamodule=FashionMNISTDataModule(data_dir=data_dir, seed=0))
    if trainer.is_global_zero:
        torch.save(
            {"W": model.W.detach(), "b": model.b.detach(), **{k: v.cpu() for k, v in check.gathered.items()}}, out
        )
