"""``ChapterFigures``: the Lightning callback that shows the training, in files, TensorBoard and Jupyter.

Everything it draws comes through public APIs: the metrics the module logs (``trainer.callback_metrics``), the
batches and outputs of validation (``on_validation_batch_end``) and the module's ``W``.

* Per epoch (cheap): ``curves.png``, the chapter's Animator (shown inline, and updated in place, in a Jupyter
  kernel); TensorBoard histograms of ``W`` and ``b`` and three small images: the templates, the first validation
  images framed right/wrong, the validation confusion matrix.
* At the end of fitting: the labelled ``weights.png``, ``predictions.png`` and ``confusion.png``, also logged to
  TensorBoard under ``figures/``.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics.classification import MulticlassConfusionMatrix

from softmax_lightning import figures
from softmax_lightning.data import class_names

SERIES = ("train_loss", "train_acc", "val_loss", "val_acc")  # the logged metrics a history row keeps


def _add_summary(tb, summary, step: int | None = None) -> None:
    """Write a TensorBoard ``Summary`` through the writer's event file (skipped once the logger has closed it)."""
    if tb.file_writer is not None:
        tb.file_writer.add_summary(summary, step)


def _add_png(tb, tag: str, png: bytes, step: int) -> None:
    """Log an encoded PNG as a TensorBoard image, byte for byte (``add_image`` would decode and re-encode it)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    header = Image.open(io.BytesIO(png))  # reads the size and mode only
    image = Summary.Image(height=header.height, width=header.width, colorspace=len(header.getbands()),
                          encoded_image_string=png)
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


class ChapterFigures(L.Callback):
    """Writes the chapter's pictures into the run folder and TensorBoard, and keeps the per-epoch history.

    Args:
        labels: class names in figures, ``"en"`` or ``"zh"`` (the chapter's Chinese names; needs a CJK font).
        n_images: how many of the first validation images the prediction grid shows (the chapter: 16). With the
            default data module, validation is the test split, so these are the chapter's first test images.

    Attributes:
        history: one row per finished epoch, from the logged metrics: ``epoch`` (1-based), ``train_loss``,
            ``train_acc``, ``val_loss``, ``val_acc`` and ``seconds`` (wall time of the epoch, validation included).
            Saved in checkpoints, so a resumed run keeps its whole history.
    """

    def __init__(self, labels: str = "en", n_images: int = 16) -> None:
        class_names(labels)  # validate early
        self.labels, self.n_images = labels, n_images
        self.history: list[dict[str, float]] = []
        self.sample: tuple[torch.Tensor, torch.Tensor] | None = None  # the first n validation images and labels
        self.confusion: torch.Tensor | None = None  # the last validation confusion matrix (true rows)
        self._confmat: MulticlassConfusionMatrix | None = None  # made for the model's number of classes
        self._epochs_ended = 0  # epochs whose training part has ended (this callback's on_train_epoch_end)
        self._curves: figures.CurvesPlot | None = None
        self._display = None  # the live curves' handle in a Jupyter notebook
        self._epoch_start = time.perf_counter()

    # ------------------------------------------------------------------ run folder and history
    @staticmethod
    def _run_dir(trainer: L.Trainer) -> Path | None:
        """The logger's run folder on rank 0 (``None`` without a logger, under ``fast_dev_run``, or on other ranks).

        Every rank must call it: ``trainer.log_dir`` broadcasts from rank 0.
        """
        log_dir = trainer.log_dir if trainer.loggers and not trainer.fast_dev_run else None
        return Path(log_dir) if log_dir and trainer.is_global_zero else None

    def _record_epoch(self, trainer: L.Trainer) -> None:
        """Append the row of the epoch whose training just ended, if not yet kept, and redraw the curves.

        The module logs an epoch's metrics in its own ``on_train_epoch_end``, which Lightning calls after this
        callback's and before the checkpoint callbacks'. So the row is taken when the epoch's checkpoint is saved
        (``on_save_checkpoint``), at the next epoch's start, or at the end of training, whichever comes first; a
        checkpoint saved mid-epoch adds no row.
        """
        done = self._epochs_ended
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in SERIES}
        if done <= len(self.history) or not metrics:
            return
        self.history.append({"epoch": done, **metrics, "seconds": round(time.perf_counter() - self._epoch_start, 3)})
        self._save_curves(self._run_dir(trainer), trainer.max_epochs)

    def _save_curves(self, run: Path | None, max_epochs: int) -> None:
        """Redraw ``curves.png`` from the history; in a Jupyter kernel, also show it (the first time) or update it."""
        if run is None or not self.history:
            return
        if self._curves is None:
            self._curves = figures.CurvesPlot(max_epochs)
        png = self._curves.save(self.history, run / "curves.png")
        display = _jupyter_display()
        if display is not None:  # the chapter's Animator: one figure in the notebook, updated in place
            from IPython.display import Image

            if self._display is None:
                self._display = display(Image(data=png), display_id=True)
            else:
                self._display.update(Image(data=png))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_epoch(trainer)
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epochs_ended = trainer.current_epoch + 1  # (current_epoch counts up after the epoch-end hooks)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_epoch(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Keep what a resumed run needs to finish its figures: the history (this epoch's row included), the
        prediction grid's images and the last confusion matrix."""
        self._record_epoch(trainer)
        checkpoint["chapter_figures"] = {"history": self.history, "sample": self.sample, "confusion": self.confusion}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("chapter_figures", {})
        self.history = list(state.get("history", []))
        self._epochs_ended = len(self.history)
        self.sample, self.confusion = state.get("sample"), state.get("confusion")

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
        if batch_idx == 0 and dataloader_idx == 0:
            self.sample = (X[: self.n_images].detach().cpu().clone(), y[: self.n_images].cpu().clone())  # own storage

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._confmat is None:
            self._confmat = MulticlassConfusionMatrix(pl_module.W.shape[1], validate_args=False)
        self._confmat.to(pl_module.device)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Histograms and images of this epoch, at x = epoch (1-based)."""
        if trainer.sanity_checking or self._confmat is None or not self._confmat.update_count:
            return
        self.confusion = self._confmat.compute().cpu()  # reduced over DDP ranks
        self._confmat.reset()
        tb = _tensorboard(trainer)
        if tb is None or trainer.state.fn != TrainerFn.FITTING:
            return
        step = trainer.current_epoch + 1
        tb.add_histogram("W", pl_module.W.detach().cpu(), step)
        tb.add_histogram("b", pl_module.b.detach().cpu(), step)
        X, y = self.sample
        with torch.no_grad():
            preds = pl_module(X.to(pl_module.device)).argmax(1).cpu()
        for tag, image in (("templates", figures.templates_image(pl_module.W)),
                           ("predictions", figures.predictions_image(X.reshape(-1, 28, 28), y, preds)),
                           ("confusion", figures.confusion_image(self.confusion))):
            _add_png(tb, tag, _png(image), step)

    # ------------------------------------------------------------------ end of fitting
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final curves and the labelled figures, as PNG files and under ``figures/`` in TensorBoard.

        ``on_fit_end`` also runs when a finished run is resumed and nothing is left to train: the figures are then
        drawn from the state restored from the checkpoint.
        """
        run = self._run_dir(trainer)
        if run is None:
            return
        if self._curves is None:  # nothing was trained in this process (a finished run, resumed)
            self._save_curves(run, trainer.max_epochs)
        figs = {"weights": figures.plot_weights(pl_module.W, self.labels)}
        if self.sample is not None:
            X, y = self.sample
            with torch.no_grad():
                conf, preds = pl_module(X.to(pl_module.device)).max(1)
            figs["predictions"] = figures.plot_predictions(X, y, preds.cpu(), self.labels, conf.cpu())
        if self.confusion is not None:
            figs["confusion"] = figures.plot_confusion(self.confusion, self.labels)
        tb = _tensorboard(trainer)
        for name, fig in figs.items():
            png = figures.save_png(fig, run / f"{name}.png")
            if tb is not None:  # the same PNG, without rendering or encoding the figure twice
                _add_png(tb, f"figures/{name}", png, trainer.current_epoch)
