"""Softmax regression (d2l, "softmax回归的从零开始实现") as a thin ``LightningModule`` around pure functions.

The chapter's steps, in its order: parameters ``W`` and ``b`` (``__init__``); the model ``reshape -> X @ W + b ->
softmax`` (``forward``); cross-entropy (``softmax_lightning.functional``); accuracy (torchmetrics, the chapter's
Accumulator); hand-written minibatch SGD driven by manual optimization (``training_step``); prediction
(``predict_step``).
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from softmax_lightning import functional as F
from softmax_lightning.data import minibatches
from softmax_lightning.errors import UserError
from softmax_lightning.optim import ChapterSGD

STAGES = ("train", "val", "test")


def init_params(num_inputs: int = 784, num_outputs: int = 10, std: float = 0.01) -> tuple[Tensor, Tensor]:
    """The chapter's parameters: ``W ~ N(0, std)`` of shape ``(num_inputs, num_outputs)`` and ``b = 0``.

    ``W`` holds exactly the chapter's values (the same draw from the same seed) but is stored column-major
    (strides ``(1, num_inputs)``): MKL multiplies a ``(256, 784)`` batch by a 10-column matrix 2-3x faster in that
    layout on this project's CPU (``X @ W``: 120 us against 300 us), and autograd keeps the gradient in the same
    layout, so the backward product speeds up too. Shapes, values and the math are unchanged.
    """
    W = torch.normal(0, std, size=(num_inputs, num_outputs))  # the chapter's draw, row-major
    return W.t().contiguous().t(), torch.zeros(num_outputs)  # same values, column-major copy


class NonFiniteLossError(UserError):
    """Training produced a nan/inf loss; raised before the update, so the last good checkpoint stays."""


class SoftmaxRegression(L.LightningModule):
    """784 -> 10 softmax regression with hand-written softmax, cross-entropy and SGD.

    Args:
        num_inputs: pixels per image (28 * 28).
        num_outputs: number of classes.
        lr: learning rate of the hand-written SGD (the chapter: 0.1).
        init_std: ``W ~ N(0, init_std)``, ``b = 0`` (the chapter: 0.01).
        softmax: ``"stable"`` (log-sum-exp from logits, default) or ``"naive"`` (the chapter's exact cells).
        momentum, nesterov, weight_decay: extensions of the hand-written SGD (0 / False / 0 is the chapter).
        lr_schedule: ``"constant"`` (the chapter) or ``"cosine"`` (annealed to 0 over ``max_epochs``, per step).
    """

    def __init__(
        self,
        num_inputs: int = 784,
        num_outputs: int = 10,
        lr: float = 0.1,
        init_std: float = 0.01,
        softmax: Literal["stable", "naive"] = "stable",
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
    ) -> None:
        super().__init__()
        for name, value, ok, rule in (
            ("lr", lr, math.isfinite(lr) and lr > 0, "a finite number > 0"),
            ("init_std", init_std, math.isfinite(init_std) and init_std >= 0, "a finite number >= 0"),
            ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
            ("weight_decay", weight_decay, math.isfinite(weight_decay) and weight_decay >= 0, "a finite number >= 0"),
            ("num_inputs", num_inputs, num_inputs >= 1, ">= 1"),
            ("num_outputs", num_outputs, num_outputs >= 2, ">= 2"),
        ):
            if not ok:
                raise UserError(f"{name} must be {rule}, got {value} (--model.{name})")
        if softmax not in ("stable", "naive"):
            raise UserError(f"softmax must be 'stable' or 'naive', got {softmax!r} (--model.softmax)")
        if nesterov and momentum == 0:
            raise UserError("nesterov needs momentum > 0 (--model.momentum)")
        self.save_hyperparameters()
        self.automatic_optimization = False  # the hand-written SGD step in training_step
        W, b = init_params(num_inputs, num_outputs, init_std)
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)
        # per stage: mean loss per sample and micro accuracy (the chapter's Accumulator), keyed by logged name
        self.metrics = nn.ModuleDict()
        for s in STAGES:
            self.metrics[f"{s}_loss"] = MeanMetric(nan_strategy="disable")
            self.metrics[f"{s}_acc"] = MulticlassAccuracy(num_outputs, average="micro", validate_args=False)
        self._pending: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {s: [] for s in STAGES}
        self.samples_seen = 0  # training samples this rank has stepped on, over the whole run (resume included)
        self.history: list[dict[str, float]] = []  # one row per epoch: the Animator's data, kept in checkpoints

    def __setattr__(self, name: str, value) -> None:
        """Lightning sets ``_current_fx_name`` (a string) around every hook call, ~15 times per SGD step here;
        ``nn.Module.__setattr__`` spends ~5 us on each looking for parameters and buffers to register. A plain
        attribute is all it is, so it skips that search."""
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def logits(self, X: Tensor) -> Tensor:
        """``reshape -> X @ W + b``: the scores before softmax."""
        return X.reshape(-1, self.W.shape[0]) @ self.W + self.b  # (batch, 784) @ (784, 10) + (10,) -> (batch, 10)

    def forward(self, X: Tensor) -> Tensor:
        """The chapter's ``net``: class probabilities, shape ``(batch, num_outputs)``."""
        softmax = F.softmax if self.hparams.softmax == "stable" else F.softmax_naive
        return softmax(self.logits(X))

    def loss(self, X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample cross-entropy ``(batch,)`` and the scores ``(batch, classes)`` whose argmax predicts."""
        logits = self.logits(X)
        if self.hparams.softmax == "naive":  # the chapter's cells: probabilities, then -log
            return F.cross_entropy_naive(F.softmax_naive(logits), y), logits
        return F.cross_entropy(logits, y), logits

    def _common_step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """Summed loss and predictions shared by every stage; keeps ``(loss sum, preds, y)`` for ``_update_metrics``."""
        X, y = batch
        loss, logits = self.loss(X, y)
        total = loss.sum()  # the chapter's l.sum()
        preds = logits.detach().argmax(1)  # (batch, classes) -> (batch,)
        self._pending[stage].append((total.detach(), preds, y))
        return total, preds

    def _update_metrics(self, stage: str) -> None:
        """Feed what ``_common_step`` kept to the stage's metric objects: once per Lightning batch.

        Not per SGD step (an ``update`` costs about a quarter of a CPU step), nor once per epoch: an epoch of small
        kept tensors interleaved with the 800 KB minibatch buffers fragments the heap, ~120 MB more peak memory.
        """
        pending, self._pending[stage] = self._pending[stage], []
        if not pending:
            return
        losses, preds, ys = zip(*pending)
        n = sum(len(y) for y in ys)
        if stage == "train" and not self.trainer.sanity_checking:
            self.samples_seen += n
        self.metrics[f"{stage}_loss"].update(torch.stack(losses).sum() / n, weight=n)
        self.metrics[f"{stage}_acc"].update(torch.cat(preds), torch.cat(ys))

    def training_step(self, batch, batch_idx: int) -> None:
        """The chapter's ``l.sum().backward(); updater(X.shape[0])`` for each minibatch in the batch.

        A batch is one ``(X, y)`` minibatch or several (a ``MinibatchGroup``, from
        ``FashionMNISTDataModule(steps_per_batch=k)``): one hand-written SGD step per minibatch, in order, exactly
        as if Lightning had served them one by one.
        """
        opt, sched, max_steps = self.optimizers(), self.lr_schedulers(), self.trainer.max_steps
        for X, y in minibatches(batch):
            if 0 <= max_steps <= self.trainer.global_step:  # --trainer.max_steps counts SGD steps
                break
            self._sgd_step(X, y, opt, sched)
        self._update_metrics("train")

    def _sgd_step(self, X: Tensor, y: Tensor, opt, sched) -> None:
        total, _ = self._common_step((X, y), "train")
        value = total.item()  # one host sync per step: cheaper on CPU than a torch.isfinite op
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss became {value} at epoch {self.current_epoch}, step {self.global_step}; the "
                f"weights were not updated and the last checkpoint (if any) is intact. Try --model.softmax stable and/or a "
                f"smaller --model.lr (now {self.hparams.lr})")
        self.manual_backward(total)
        opt.step(batch_size=len(y))
        if sched is not None:
            sched.step()

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """Loss and accuracy into the stage's metrics; returns the predicted classes (the confusion matrix's input)."""
        preds = self._common_step(batch, stage)[1]
        self._update_metrics(stage)
        return preds

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> Tensor:
        """Class probabilities for a batch of images (or an ``(X, y)`` batch)."""
        X = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(X)

    def _log_epoch(self, stage: str) -> None:
        """Log ``{stage}_loss`` (mean per sample) and ``{stage}_acc`` once per epoch against the epoch, then reset.

        torchmetrics' ``compute`` already reduces over DDP ranks. ``step`` makes the epoch (1-based; for test, the
        number of epochs trained) the x-axis in TensorBoard.
        """
        names = (f"{stage}_loss", f"{stage}_acc")  # the steps already fed them (_update_metrics)
        if self.trainer.sanity_checking:
            for name in names:
                self.metrics[name].reset()
            return
        fitting = stage != "test"
        self.log("step", float(self.current_epoch + fitting))
        if self.metrics[names[1]].update_count == 0:
            return
        row = self._history_row() if fitting else {}
        for name in names:
            metric = self.metrics[name]
            value = metric.compute()
            self.log(name, value, prog_bar=fitting)
            row[name] = float(value)
            metric.reset()

    def _history_row(self) -> dict[str, float]:
        """This epoch's row of ``history`` (created on first use)."""
        while len(self.history) <= self.current_epoch:
            self.history.append({"epoch": len(self.history) + 1})
        return self.history[self.current_epoch]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history
        checkpoint["samples_seen"] = self.samples_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint.get("history", [])
        self.samples_seen = checkpoint.get("samples_seen", 0)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        hp = self.hparams
        opt = ChapterSGD([self.W, self.b], lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov,
                         weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return opt
        total = self._total_sgd_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _total_sgd_steps(self) -> int:
        """SGD steps in the whole run: ``max_steps``, else epochs x minibatches per epoch (what the cosine spans)."""
        trainer = self.trainer
        batches = trainer.estimated_stepping_batches  # Lightning batches in the run; sets up the train loader
        if not math.isfinite(batches):
            raise UserError("lr_schedule cosine needs a finite run: set --trainer.max_epochs or --trainer.max_steps")
        if trainer.max_steps > 0:
            return trainer.max_steps
        loader = trainer.train_dataloader
        if hasattr(loader, "num_minibatches") and trainer.num_training_batches == len(loader):
            return max(1, trainer.max_epochs * loader.num_minibatches)  # whole epochs (the last group may be short)
        return max(1, int(batches) * getattr(loader, "group", 1))
