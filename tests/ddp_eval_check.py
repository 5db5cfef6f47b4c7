"""Run by tests/test_reliability.py: validate and test one fixed model on N CPU processes; rank 0 saves the metrics
and the validation confusion matrix.

    python tests/ddp_eval_check.py OUT.pt DATA_DIR N
"""

import sys

import lightning as L
import torch

from softmax_lightning.callbacks import ChapterFigures
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.model import SoftmaxRegression

if __name__ == "__main__":
    out, data_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    model = SoftmaxRegression(init_std=0.05)  # a fixed model whose predictions spread over all classes
    figures = ChapterFigures()
    kw = {"strategy": "ddp"} if n > 1 else {}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=n,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[figures],
        **kw,
    )
    dm = FashionMNISTDataModule(data_dir=data_dir, batch_size=100)
    val = trainer.validate(model, datamodule=dm, verbose=False)[0]
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    if trainer.is_global_zero:
        torch.save({**val, **test, "confusion": figures.confusion}, out)
