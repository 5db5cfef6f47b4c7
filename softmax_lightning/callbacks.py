"""The Lightning callbacks that show the training: ``ChapterFigures`` (files, TensorBoard, Jupyter) and ``EpochLog``.

Everything they use comes through public APIs: the metrics the module logs (``trainer.callback_metrics``), the
batches and outputs of validation (``on_validation_batch_end``) and the module's ``W``.

``ChapterFigures``:
* per epoch (cheap): ``curves.png``, the chapter's Animator (shown inline, and updated in place, in a Jupyter
  kernel); TensorBoard histograms of ``W`` and ``b`` and three small images: the templates, the first validation
  images framed right/wrong, the validation confusion matrix;
* at the end of fitting: the labelled ``weights.png``, ``predictions.png``, ``confusion.png`` and
  ``confusions.png`` (the three most-confused pairs: the difference of their templates, and validation images taken
  for one another), also logged to TensorBoard under ``figures/``.

Everything in TensorBoard sits on Lightning's x-axis, the global step (235 per epoch); ``curves.png`` keeps the
chapter's epoch axis.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics.classification import MulticlassConfusionMatrix

from softmax_lightning import figures
from softmax_lightning.confusions import ConfusionExamples, most_confused_pairs
from softmax_lightning.errors import UserError

TRAIN, VAL = ("train_loss", "train_acc"), ("val_loss", "val_acc")
SERIES = (*TRAIN, *VAL)  # the logged metrics a history row keeps
MAX_IMAGES = 64  # the prediction grid's limit: more would not be readable


def _add_summary(tb, summary, step: int | None = None) -> None:
    """Write a TensorBoard ``Summary`` through the writer's event file (skipped once the logger has closed it)."""
    if tb.file_writer is not None:
        tb.file_writer.add_summary(summary, step)


def _add_png(tb, tag: str, png: bytes, step: int) -> None:
    """Log an encoded PNG as a TensorBoard image, byte for byte (``add_image`` would decode and re-encode it)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    header = Image.open(io.BytesIO(png))  # reads the size and mode only
    image = Summary.Image(
        height=header.height, width=header.width, colorspace=len(header.getbands()), encoded_image_string=png
    )
    _add_summary(tb, Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def _png(image: torch.Tensor) -> bytes:
    """A ``(3, H, W)`` image in [0, 1] as a PNG, compressed fast (zlib level 1): these are written every epoch."""
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()  # -> (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _tensorboard(trainer: L.Trainer):
    """The ``SummaryWriter`` of the trainer's first TensorBoardLogger on this process, or ``None``."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _jupyter_display():
    """IPython's ``display`` when this process is a Jupyter kernel, else ``None`` (a terminal, a script, pytest)."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has it loaded already
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "kernel"):
        return None
    from IPython.display import display

    return display


class EpochHistory(L.Callback):
    """One row per finished training epoch, from what the module logs; the base of ``ChapterFigures`` and
    ``EpochLog``, which draw or print each new row (``on_history_row``).

    The module logs an epoch's train metrics in its own ``on_train_epoch_end``, which Lightning calls after the
    (non-checkpoint) callbacks' ``on_train_epoch_end``. So a row is completed at the first moment after that: the next
    epoch's start, the end of training, or a checkpoint being saved (``ChapterFigures.state_dict``). Validation values
    are taken when each validation ends, so an epoch without validation has none, and a run resumed from a checkpoint
    saved at a validation's end (before the epoch's end) still has them.

    Attributes:
        history: one row per finished epoch: ``epoch`` (1-based), ``train_loss``, ``train_acc``, ``val_loss`` and
            ``val_acc`` (when the epoch validated) and ``seconds`` (wall time of the epoch, validation included).
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._pending: dict[str, float] = {}  # this epoch's values known so far (its last validation's)
        self._ended = 0  # epochs whose training part has ended
        self._start = time.perf_counter()  # when this epoch started (shifted back on resume by the time it had run)

    def on_history_row(self, trainer: L.Trainer, row: dict[str, float]) -> None:
        """Called with each new row."""

    def _complete_row(self, trainer: L.Trainer) -> None:
        """Append the row of the epoch whose training has ended, once its train metrics are logged."""
        train = {k: float(v) for k, v in trainer.callback_metrics.items() if k in TRAIN}
        if self._ended <= len(self.history) or not train:
            return
        row = {"epoch": self._ended, **train, **self._pending, "seconds": round(time.perf_counter() - self._start, 3)}
        self.history.append(row)
        self.on_history_row(trainer, row)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._complete_row(trainer)  # (Lightning does not call this hook when it resumes in the middle of an epoch)
        self._pending, self._start = {}, time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ended = trainer.current_epoch + 1  # (current_epoch counts up after the epoch-end hooks)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._pending.update({k: float(v) for k, v in trainer.callback_metrics.items() if k in VAL})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._complete_row(trainer)

    def history_state(self) -> dict[str, Any]:
        """The history and the epoch in progress, for a checkpoint."""
        return {
            "history": list(self.history),
            "pending": dict(self._pending),
            "seconds_so_far": time.perf_counter() - self._start,
        }

    def load_history_state(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self._pending = dict(state.get("pending", {}))
        self._ended = len(self.history)
        self._start = time.perf_counter() - float(state.get("seconds_so_far", 0.0))


class ChapterFigures(EpochHistory):
    """Writes the chapter's pictures into the run folder and TensorBoard, and keeps the per-epoch history.

    Args:
        labels: class names in figures, ``"en"`` or ``"zh"`` (the chapter's Chinese names; needs a CJK font).
        n_images: how many of the first validation images the prediction grid shows (the chapter: 16), 1 to 64.
            With the default data module, validation is the test split, so these are the chapter's first test images.
        val_name: what the validation split is called in the figures: ``"val"``, or ``"test"`` when validation runs
            on the test split (the chapter's "test acc" curve).

    Attributes:
        history: one row per finished epoch (``EpochHistory``), saved in every checkpoint (``state_dict``), so a
            resumed run keeps its whole history.
    """

    def __init__(self, labels: str = "en", n_images: int = 16, val_name: str = "val") -> None:
        if labels not in ("en", "zh"):
            raise UserError(f"labels must be 'en' or 'zh', got {labels!r} (--figures.labels)")
        if not 1 <= n_images <= MAX_IMAGES:
            raise UserError(f"n_images must be in 1..{MAX_IMAGES}, got {n_images} (--figures.n_images)")
        if val_name not in ("val", "test"):
            raise UserError(f"val_name must be 'val' or 'test', got {val_name!r}")
        super().__init__()
        self.labels, self.n_images, self.val_name = labels, n_images, val_name
        self.sample: tuple[torch.Tensor, torch.Tensor] | None = None  # the first n validation images and labels
        self.confusion: torch.Tensor | None = None  # the last validation confusion matrix (true rows)
        self.mistakes = ConfusionExamples(per_pair=4)  # a few images per (true, predicted) mistake, last validation
        self._trainer: L.Trainer | None = None
        self._run: Path | None = None  # the run folder (rank 0, with a logger)
        self._confmat: MulticlassConfusionMatrix | None = None  # made for the model's number of classes
        self._curves: figures.CurvesPlot | None = None
        self._display = None  # the live curves' handle in a Jupyter notebook

    # ------------------------------------------------------------------ run folder and history
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Keep the trainer (as Lightning's own progress bars do) and find the run folder, on every rank:
        ``trainer.log_dir`` broadcasts from rank 0."""
        self._trainer = trainer
        log_dir = trainer.log_dir if trainer.loggers and not trainer.fast_dev_run else None
        self._run = Path(log_dir) if log_dir and trainer.is_global_zero else None

    def on_history_row(self, trainer: L.Trainer, row: dict[str, float]) -> None:
        self._save_curves(trainer.max_epochs)

    def _save_curves(self, max_epochs: int) -> None:
        """Redraw ``curves.png`` from the history; in a Jupyter kernel, also show it (the first time) or update it."""
        if self._run is None or not self.history:
            return
        if self._curves is None:
            self._curves = figures.CurvesPlot(max_epochs, val_label=f"{self.val_name} acc")
        png = self._curves.save(self.history, self._run / "curves.png")
        display = _jupyter_display()
        if display is not None:  # the chapter's Animator: one figure in the notebook, updated in place
            from IPython.display import Image

            if self._display is None:
                self._display = display(Image(data=png), display_id=True)
            else:
                self._display.update(Image(data=png))

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the history (with the row of an epoch that has just ended), the values of the
        epoch in progress, the prediction grid's images and the last confusion matrix."""
        if self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING:
            self._complete_row(self._trainer)
        return {
            **self.history_state(),
            "sample": self.sample,
            "confusion": self.confusion,
            "mistakes": self.mistakes.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_history_state(state_dict)
        self.sample, self.confusion = state_dict.get("sample"), state_dict.get("confusion")
        if "mistakes" in state_dict:
            self.mistakes.load_state_dict(state_dict["mistakes"])

    # ------------------------------------------------------------------ per epoch
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the hparams summary with ``val_acc`` / ``test_acc`` as its metrics (TensorBoard's HParams tab)."""
        tb = _tensorboard(trainer)
        if tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        params = dict(pl_module.hparams)
        if trainer.datamodule is not None:
            params.update({f"data.{k}": v for k, v in trainer.datamodule.hparams.items()})
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        for summary in hparams(params, {"val_acc": 0.0, "test_acc": 0.0}):  # names the metrics; logs no values
            _add_summary(tb, summary)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Count the batch's predictions (``outputs``: the classes ``validation_step`` returns) and keep the first
        ``n_images`` validation images for the prediction grid."""
        if trainer.sanity_checking or outputs is None:
            return
        X, y = batch
        self._confmat.update(outputs, y)  # (made in on_validation_start)
        self.mistakes.update(X, y, outputs)
        if batch_idx == 0 and dataloader_idx == 0:
            self.sample = (X[: self.n_images].detach().cpu().clone(), y[: self.n_images].cpu().clone())  # own storage

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.mistakes.reset()
        if self._confmat is None:
            self._confmat = MulticlassConfusionMatrix(pl_module.W.shape[1], validate_args=False)
        self._confmat.to(pl_module.device)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Histograms and images of this validation, at x = the global step."""
        if trainer.sanity_checking or self._confmat is None or not self._confmat.update_count:
            return
        self.confusion = self._confmat.compute().cpu()  # reduced over DDP ranks
        self._confmat.reset()
        tb = _tensorboard(trainer)
        if tb is None or trainer.state.fn != TrainerFn.FITTING:
            return
        step = trainer.global_step
        tb.add_histogram("W", pl_module.W.detach().float().cpu(), step)
        tb.add_histogram("b", pl_module.b.detach().float().cpu(), step)
        X, y = self.sample
        with torch.no_grad():
            preds = pl_module(X.to(pl_module.device, pl_module.dtype)).argmax(1).cpu()
        for tag, image in (
            ("templates", figures.templates_image(pl_module.W)),
            ("predictions", figures.predictions_image(X.reshape(-1, 28, 28), y, preds)),
            ("confusion", figures.confusion_image(self.confusion)),
        ):
            _add_png(tb, tag, _png(image), step)

    # ------------------------------------------------------------------ end of fitting
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final curves and the labelled figures, as PNG files and under ``figures/`` in TensorBoard.

        ``on_fit_end`` also runs when a finished run is resumed and nothing is left to train: the figures are then
        drawn from the state restored from the checkpoint.
        """
        if self._run is None:
            return
        if self._curves is None:  # nothing was trained in this process (a finished run, resumed)
            self._save_curves(trainer.max_epochs)
        figs = {"weights": figures.plot_weights(pl_module.W, self.labels)}
        if self.sample is not None:
            X, y = self.sample
            with torch.no_grad():
                conf, preds = pl_module(X.to(pl_module.device, pl_module.dtype)).max(1)
            figs["predictions"] = figures.plot_predictions(X, y, preds.cpu(), self.labels, conf.float().cpu())
        if self.confusion is not None:
            split = "test split" if self.val_name == "test" else "validation"
            figs["confusion"] = figures.plot_confusion(self.confusion, self.labels, f"{split}: confusion matrix")
            figs["confusions"] = figures.plot_confusions(
                pl_module.W,
                most_confused_pairs(self.confusion),
                self.mistakes.examples,
                self.labels,
                matrix=self.confusion,
            )
        tb = _tensorboard(trainer)
        for name, fig in figs.items():
            png = figures.save_png(fig, self._run / f"{name}.png")
            if tb is not None:  # the same PNG, without rendering or encoding the figure twice
                _add_png(tb, f"figures/{name}", png, trainer.global_step)


class EpochLog(ProgressBar, EpochHistory):
    """Lightning's progress bar for logs: one plain line per epoch, and no carriage-return redraws.

    The training script uses it instead of the TQDM bar when stdout is not a terminal (a file, a pipe, CI, a
    scheduler). Each line holds the epoch, the train loss and accuracy, the val accuracy and the epoch's seconds; it is
    written when the epoch's metrics are all logged (the next epoch's start, or the end of training).

    Args:
        val_name: ``"test"`` labels the val accuracy ``test_acc``, for a validation that runs on the test split.
    """

    def __init__(self, val_name: str = "val") -> None:
        ProgressBar.__init__(self)
        EpochHistory.__init__(self)  # (ProgressBar's __init__ does not call the next one's)
        self._enabled = True
        self.val_name = val_name

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_history_row(self, trainer: L.Trainer, row: dict[str, float]) -> None:
        if self._enabled:
            names = {"val_acc": f"{self.val_name}_acc"}
            values = "  ".join(f"{names.get(k, k)} {row[k]:.4f}" for k in SERIES if k != "val_loss" and k in row)
            print(f"epoch {row['epoch']}/{trainer.max_epochs}  {values}  {row['seconds']:.1f} s", flush=True)
