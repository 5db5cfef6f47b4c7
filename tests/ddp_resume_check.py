"""Run by tests/test_reliability.py: under 2-process CPU DDP (gloo), one epoch of 6 steps run whole, then the same
epoch resumed from the checkpoint saved after its step 3; the epoch's train_loss and train_acc of both runs.

    python tests/ddp_resume_check.py OUT.pt DATA_DIR CKPT_DIR
"""

import sys

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.model import SoftmaxRegression


def fit(data_dir: str, **kw) -> tuple[L.Trainer, dict[str, float]]:
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=6,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=kw.pop("callbacks", None),
        enable_checkpointing=kw.pop("enable_checkpointing", True),
    )
    trainer.fit(SoftmaxRegression(), datamodule=FashionMNISTDataModule(data_dir=data_dir, seed=0), **kw)
    return trainer, {k: float(trainer.callback_metrics[k]) for k in ("train_loss", "train_acc")}


if __name__ == "__main__":
    out, data_dir, ckpt_dir = sys.argv[1:4]
    _, whole = fit(data_dir, callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1)])
    trainer, resumed = fit(data_dir, enable_checkpointing=False, ckpt_path=f"{ckpt_dir}/epoch=0-step=3.ckpt")
    if trainer.is_global_zero:
        torch.save({"whole": whole, "resumed": resumed}, out)
