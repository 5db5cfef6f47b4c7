"""Softmax regression (d2l, "softmax回归的从零开始实现") as a thin ``LightningModule`` around pure functions.

The chapter's steps, in its order: parameters ``W`` and ``b`` (``__init__``); the model ``reshape -> X @ W + b ->
softmax`` (``forward``); cross-entropy (``softmax_lightning.functional``); accuracy (torchmetrics objects, the
chapter's Accumulator); hand-written minibatch SGD driven by manual optimization (``training_step``); prediction
(``predict_step``).

Use it in your own ``Trainer``::

    trainer = L.Trainer(max_epochs=10)
    trainer.fit(SoftmaxRegression(), datamodule=FashionMNISTDataModule())
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from softmax_lightning.errors import UserError
from softmax_lightning.functional import cross_entropy, cross_entropy_naive, softmax, softmax_naive
from softmax_lightning.optim import ChapterSGD

STAGES = ("train", "val", "test")
TRAIN_SUMS = ("train_loss", "train_acc")  # the metrics whose running sums a checkpoint keeps
TRAIN_SUM_KEYS = tuple(f"metrics.{name}." for name in TRAIN_SUMS)  # their entries' prefixes in the state_dict
MAX_SCALE = 1e6  # the largest lr, init_std and weight_decay accepted: far past divergence (the chapter: 0.1, 0.01,
# 0); much larger values (1e30) overflow the float32 weights within one update, before the loss check can see it
DIVERGED = 1e6  # a per-sample cross-entropy above this (p(true class) < e^-1000000) means training has blown up
HALF = (torch.float16, torch.bfloat16)
SCHEDULE_KEY = "cosine_schedule_steps"  # in a checkpoint: the SGD steps the run's cosine schedule spans


class NonFiniteLossError(UserError):
    """Training diverged (a nan/inf or astronomically large loss, or a gradient that is not finite); raised before
    the update, so the weights and the last checkpoint stay as they were."""


class SoftmaxRegression(L.LightningModule):
    """784 -> 10 softmax regression with hand-written softmax, cross-entropy and SGD.

    Args:
        num_inputs: pixels per image (28 * 28).
        num_outputs: number of classes.
        lr: learning rate of the hand-written SGD (the chapter: 0.1).
        init_std: the standard deviation of ``W ~ N(0, init_std²)``; ``b = 0`` (the chapter: 0.01).
        softmax: ``"stable"`` (log-sum-exp from logits, default) or ``"naive"`` (the chapter's exact cells).
        momentum, nesterov, weight_decay: extensions of the hand-written SGD (0 / False / 0 is the chapter).
        lr_schedule: ``"constant"`` (the chapter) or ``"cosine"`` (annealed to 0 over the run, stepped per batch).
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
            ("lr", lr, 0 < lr <= MAX_SCALE, f"a number > 0 and <= {MAX_SCALE:g}"),
            ("init_std", init_std, 0 <= init_std <= MAX_SCALE, f"a number >= 0 and <= {MAX_SCALE:g}"),
            ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
            ("weight_decay", weight_decay, 0 <= weight_decay <= MAX_SCALE, f"a number >= 0 and <= {MAX_SCALE:g}"),
            ("num_inputs", num_inputs, num_inputs >= 1, ">= 1"),
            ("num_outputs", num_outputs, num_outputs >= 2, ">= 2"),
        ):
            if not ok:
                raise UserError(f"{name} must be {rule}, got {value} (--model.{name})")
        if softmax not in ("stable", "naive"):
            raise UserError(f"softmax must be 'stable' or 'naive', got {softmax!r} (--model.softmax)")
        if lr_schedule not in ("constant", "cosine"):
            raise UserError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r} (--model.lr_schedule)")
        if nesterov and momentum == 0:
            raise UserError("nesterov needs momentum > 0 (--model.momentum)")
        self.save_hyperparameters()
        self.automatic_optimization = False  # training_step takes the hand-written SGD step itself
        # 2. the chapter's parameters, drawn exactly as it does
        self.W = nn.Parameter(torch.normal(0, init_std, size=(num_inputs, num_outputs)))
        self.b = nn.Parameter(torch.zeros(num_outputs))
        # 6. per stage, the chapter's Accumulator as metric objects: mean loss per sample, accuracy
        self.metrics = nn.ModuleDict()
        for stage in STAGES:
            self.metrics[f"{stage}_loss"] = MeanMetric(nan_strategy="disable")  # non-finite losses stop training
            self.metrics[f"{stage}_acc"] = MulticlassAccuracy(num_outputs, average="micro", validate_args=False)
        for name in TRAIN_SUMS:  # saved in checkpoints: a run resumed in the middle of an epoch (or before its
            self.metrics[name].persistent(True)  # end-of-epoch hooks) still averages the whole epoch
        self._planned_steps: int | None = None  # the cosine schedule's length in SGD steps (on_train_start)

    # ------------------------------------------------------------------ 4. the model
    def logits(self, X: Tensor) -> Tensor:
        """``reshape -> X @ W + b``: the scores before softmax."""
        return X.reshape(-1, self.W.shape[0]) @ self.W + self.b  # (batch, 784) @ (784, 10) + (10,) -> (batch, 10)

    def forward(self, X: Tensor) -> Tensor:
        """The chapter's ``net``: class probabilities, shape ``(batch, num_outputs)``."""
        probabilities = softmax if self.hparams.softmax == "stable" else softmax_naive
        return probabilities(self.logits(X))

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """5. Per-sample cross-entropy, shape ``(batch,)``."""
        if self.hparams.softmax == "naive":  # the chapter's cells: probabilities, then -log
            return cross_entropy_naive(softmax_naive(logits), y)
        return cross_entropy(logits, y)

    # ------------------------------------------------------------------ 7. training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """The chapter's step: ``l = loss(net(X), y); l.sum().backward(); updater(X.shape[0])``.

        ``net(X)`` is ``forward`` (probabilities); training starts from its logits instead, because the stable
        cross-entropy works from logits (exercises 1-3). ``softmax="naive"`` trains on the chapter's exact cells.
        """
        X, y = batch
        opt = self.optimizers()
        opt.zero_grad()  # Lightning's pattern: a step skipped by a mixed-precision grad scaler leaves no stale grads
        logits = self.logits(X)  # (batch, 10)
        l = self.loss(logits, y)  # (batch,)
        self.manual_backward(l.sum())  # the chapter's l.sum().backward()
        self._stop_if_diverged(l)
        updates = opt.optimizer.updates
        opt.step(batch_size=len(y))  # the chapter's updater(X.shape[0]): param -= lr * grad / batch_size; zero grad
        sched = self.lr_schedulers()  # manual optimization: schedulers are stepped here, after each update applied
        if sched is not None and opt.optimizer.updates > updates:  # (16-mixed's grad scaler may skip a step)
            sched.step()
        self._update_metrics("train", l, logits, y)
        return l.detach().mean()  # mean loss per sample: what tools such as the LR finder read

    def _stop_if_diverged(self, l: Tensor) -> None:
        """Raise before the update when, on any rank, the mean loss is nan, inf or beyond ``DIVERGED``, or a gradient
        is not finite (all ranks agree, so under DDP none is left waiting).

        The gradient check matters on its own: the chapter's naive path can give a finite, correct loss whose
        gradient is already ``nan`` (exercise 2). Under ``16-mixed`` the gradients are scaled and may overflow on
        purpose: the grad scaler skips those steps itself, so only the loss is checked there.
        """
        checks = [l.detach().mean()]  # and the largest |gradient| of W and b (nan and inf survive amax)
        if self.trainer.precision != "16-mixed":
            checks += [p.grad.detach().abs().amax() for p in (self.W, self.b) if p.grad is not None]
        loss, *grad_max = torch.stack([t.float() for t in checks]).tolist()  # one host sync per step
        grads_finite = all(math.isfinite(g) for g in grad_max)
        diverged = not math.isfinite(loss) or loss > DIVERGED or not grads_finite
        if self.trainer.strategy.reduce_boolean_decision(diverged, all=False):
            what = (
                f"the mean loss became {loss:.4g}"
                if grads_finite or not math.isfinite(loss)
                else f"the gradient is not finite (the mean loss is still {loss:.4g})"
            )
            raise NonFiniteLossError(
                f"training diverged: {what} at epoch {self.current_epoch}, step {self.global_step}; this step was not "
                f"applied, so the weights and the last checkpoint (if any) are as before it. Try --model.softmax "
                f"stable and/or a smaller --model.lr (now {self.hparams.lr:g}) or --model.init_std (now "
                f"{self.hparams.init_std:g})"
            )

    def _update_metrics(self, stage: str, l: Tensor, logits: Tensor, y: Tensor) -> None:
        """Feed one batch to the stage's metric objects (the chapter's ``metric.add(l.sum(), accuracy, y.numel())``)."""
        self.metrics[f"{stage}_loss"].update(l.detach())
        self.metrics[f"{stage}_acc"].update(logits.detach(), y)

    # ------------------------------------------------------------------ 6. evaluation
    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """Loss and accuracy into the stage's metrics; returns the predicted classes ``(batch,)`` for callbacks."""
        X, y = batch
        logits = self.logits(X)
        self._update_metrics(stage, self.loss(logits, y), logits, y)
        return logits.argmax(1)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    # ------------------------------------------------------------------ 8. prediction
    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> Tensor:
        """Class probabilities for a batch of images (or an ``(X, y)`` batch)."""
        X = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(X)

    # ------------------------------------------------------------------ logging, once per epoch
    def _log_epoch(self, stage: str) -> None:
        """Log ``{stage}_loss`` (mean per sample) and ``{stage}_acc`` once per epoch, at Lightning's x-axis (the
        global step).

        The metric objects are logged themselves: Lightning calls ``compute()`` (reduced over DDP ranks) and resets
        them for the next epoch.
        """
        for name in (f"{stage}_loss", f"{stage}_acc"):  # the bar shows val: train's arrive after its last redraw
            self.log(name, self.metrics[name], prog_bar=stage == "val")

    def on_train_epoch_start(self) -> None:
        """A new epoch starts from empty train metrics (a checkpoint saved at an epoch's end may hold its sums;
        Lightning does not call this hook when it resumes in the middle of an epoch, whose sums it restored)."""
        for name in TRAIN_SUMS:
            self.metrics[name].reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Under DDP every rank builds the checkpoint and rank 0 writes it: the train metrics' sums saved are those
        of all ranks (``on_load_checkpoint`` gives them back to rank 0 alone). And the cosine schedule's length, so
        that a resume which would change it is refused (``on_train_start``)."""
        if self.trainer.world_size > 1 and not self.trainer.interrupted:  # (an exception's save is one rank's alone)
            for name in TRAIN_SUMS:
                with self.metrics[name].sync_context():  # (a collective: every rank is here)
                    for key, value in self.metrics[name].metric_state.items():
                        checkpoint["state_dict"][f"metrics.{name}.{key}"] = value.clone()
        if self._planned_steps is not None:
            checkpoint[SCHEDULE_KEY] = self._planned_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The train metrics' sums resume on rank 0 and start from zero on the other ranks (the sums saved are those
        of all ranks), and a checkpoint without them (written before they were saved) loads with empty ones. ``W``
        and ``b`` must be there: strict loading says so. A cosine run keeps its planned length."""
        state = checkpoint["state_dict"]
        for name, value in self.state_dict().items():
            if name.startswith(TRAIN_SUM_KEYS) and self.global_rank > 0:
                state[name] = torch.zeros_like(value)
            elif name.startswith("metrics."):
                state.setdefault(name, torch.zeros_like(value))
        self._planned_steps = checkpoint.get(SCHEDULE_KEY)

    def on_train_start(self) -> None:
        """The cosine schedule spans the whole run, in SGD steps: planned here, once the training data is set up
        (reading ``estimated_stepping_batches`` in ``configure_optimizers`` makes Lightning set up the training data
        before it restores a checkpoint, and the loader's place in the epoch is then not restored: Lightning issue
        #20550). A resume that would change the run's length (say a larger ``max_epochs``) is refused: the schedule
        would jump from the middle of its curve."""
        if self.hparams.lr_schedule != "cosine":
            return
        steps = self.trainer.estimated_stepping_batches
        if not (math.isfinite(steps) and steps > 0):
            raise UserError(
                "lr_schedule cosine needs a run of known length: a training DataLoader with a length, or max_steps"
            )
        planned = self._planned_steps if self.trainer.ckpt_path else None  # only a resume continues a schedule
        if planned is not None and steps != planned:
            raise UserError(
                f"this checkpoint's cosine schedule spans {planned} SGD steps, but this Trainer would run "
                f"{int(steps)}; a cosine run resumes only with the same number of steps (its max_epochs, max_steps, "
                f"limit_train_batches, batch size and devices); to train longer, start a new run with the larger "
                f"--trainer.max_epochs"
            )
        self._planned_steps = int(steps)

    # ------------------------------------------------------------------ 7. the hand-written SGD
    def configure_optimizers(self):
        if self.W.dtype in HALF:  # Lightning has already converted the module for --trainer.precision here
            raise UserError(
                f"precision {self.trainer.precision!r} keeps W and b in {str(self.W.dtype).removeprefix('torch.')}, "
                f"where the SGD update lr * grad / batch_size (about 1e-5) rounds away; use --trainer.precision "
                f"bf16-mixed or 16-mixed (float32 weights, half-precision arithmetic) or 32-true"
            )
        hp = self.hparams
        opt = ChapterSGD(
            [self.W, self.b], lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay
        )
        if hp.lr_schedule == "constant":
            return opt
        if self.trainer.max_steps == -1 and self.trainer.max_epochs in (None, -1):
            raise UserError("lr_schedule cosine needs a finite run: set --trainer.max_epochs or --trainer.max_steps")

        def cosine(step: int) -> float:
            """The lr factor after ``step`` SGD steps: from 1 down to 0 at the run's last step, along a half cosine."""
            if step == 0:
                return 1.0
            total = self._planned_steps  # (on_train_start plans it)
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
        return {"optimizer": opt, "lr_scheduler": scheduler}  # stepped per batch in training_step
