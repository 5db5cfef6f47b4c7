"""Lightning callbacks that show the training: TensorBoard hparams, histograms and images, and PNG figures.

Per epoch (cheap): histograms of ``W`` and ``b``; tensor images of the templates, the first test images framed
right/wrong, and the validation confusion matrix; ``curves.png``. At the end of fitting: the labelled ``weights.png``, ``predictions.png``, ``confusion.png``, also logged
to TensorBoard under ``figures/``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics.classification import MulticlassConfusionMatrix

from softmax_lightning import figures
from softmax_lightning.data import class_names


def use_fast_event_checksums() -> bool:
    """Make TensorBoard's event writer checksum each record with ``google-crc32c`` (C) instead of its own CRC-32C.

    Without TensorFlow installed, ``tensorboard`` computes every record's masked CRC-32C in pure Python (about
    1 us per byte) on its writer thread, holding the GIL: a 10 KB image costs ~10 ms and stalls the training loop
    meanwhile, a 60 KB figure ~60 ms. The checksums are the same (``test_figures_and_predict`` compares them).
    Returns whether the fast path is in place.
    """
    try:
        import google_crc32c
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return False
    if google_crc32c.implementation != "c":
        return False

    def masked_crc32c(data: bytes) -> int:  # tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c
        x = google_crc32c.value(bytes(data))
        return (((x >> 15) | ((x << 17) & 0xFFFFFFFF)) + 0xA282EAD8) & 0xFFFFFFFF

    record_writer.masked_crc32c = masked_crc32c
    return True


def _add_png(tb, tag: str, png: bytes, step: int) -> None:
    """Log an already encoded PNG as a TensorBoard image (``SummaryWriter.add_image`` would decode nothing but
    re-encode the pixels, at zlib level 6)."""
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    header = Image.open(io.BytesIO(png))  # reads the size and mode only
    image = Summary.Image(height=header.height, width=header.width, colorspace=len(header.getbands()),
                          encoded_image_string=png)
    tb.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def _add_image(tb, tag: str, image: torch.Tensor, step: int) -> None:
    """``SummaryWriter.add_image`` for a ``(3, H, W)`` image in [0, 1], PNG-compressed fast (zlib level 1 instead of
    6: a third of the time, files ~20% larger), since these are written every epoch."""
    import io

    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()  # -> (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    _add_png(tb, tag, buf.getvalue(), step)


def _tensorboard(trainer: L.Trainer):
    """The TensorBoard ``SummaryWriter`` of the trainer's first TensorBoardLogger, or ``None``."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ChapterFigures(L.Callback):
    """Writes the chapter's pictures into the run folder and TensorBoard.

    Args:
        labels: class names in figures, ``"en"`` or ``"zh"`` (the chapter's Chinese names; needs a CJK font).
        n_images: how many of the first test images the prediction grid shows (the chapter: 16).
    """

    def __init__(self, labels: str = "en", n_images: int = 16) -> None:
        class_names(labels)  # validate early
        self.labels, self.n_images = labels, n_images
        self.confusion = MulticlassConfusionMatrix(10, validate_args=False)
        self.last_confusion: torch.Tensor | None = None
        self._curves: figures.CurvesPlot | None = None

    @property
    def _active(self) -> bool:
        return rank_zero_only.rank == 0

    def _run_dir(self, trainer: L.Trainer) -> Path | None:
        return Path(trainer.log_dir) if trainer.log_dir else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the hparams summary with ``val_acc`` / ``test_acc`` as its metrics (TensorBoard's HParams tab)."""
        self.confusion = self.confusion.to(pl_module.device)
        tb = _tensorboard(trainer)
        if tb is None or not self._active:
            return
        from torch.utils.tensorboard.summary import hparams

        params = dict(pl_module.hparams)
        if trainer.datamodule is not None:
            params.update({f"data.{k}": v for k, v in trainer.datamodule.hparams.items()})
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        for summary in hparams(params, {"val_acc": 0.0, "test_acc": 0.0}):
            tb.file_writer.add_summary(summary)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or outputs is None:
            return
        self.confusion.update(outputs, batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Histograms and images of this epoch, at x = epoch (1-based)."""
        if trainer.sanity_checking:
            return
        self.last_confusion = self.confusion.compute()  # reduced over DDP ranks
        self.confusion.reset()
        tb = _tensorboard(trainer)
        if tb is None or not self._active or trainer.state.fn != TrainerFn.FITTING:
            return
        step = trainer.current_epoch + 1
        tb.add_histogram("W", pl_module.W.detach().cpu(), step)
        tb.add_histogram("b", pl_module.b.detach().cpu(), step)
        X, y = self._first_test_images(trainer)
        with torch.no_grad():
            preds = pl_module(X).argmax(1)
        for tag, image in (("templates", figures.templates_image(pl_module.W)),
                           ("predictions", figures.predictions_image(X.reshape(-1, 28, 28), y, preds)),
                           ("confusion", figures.confusion_image(self.last_confusion))):
            _add_image(tb, tag, image, step)

    def _first_test_images(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = trainer.datamodule.splits["test"]
        return X[: self.n_images], y[: self.n_images]

    def _save_curves(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run = self._run_dir(trainer)
        if run is None or not self._active or not pl_module.history:
            return
        if self._curves is None:
            self._curves = figures.CurvesPlot(trainer.max_epochs)
        self._curves.save(pl_module.history, run / "curves.png")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The previous epoch's row of ``history`` is complete now (the module logs it after callbacks run)."""
        self._save_curves(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final curves and the labelled figures, as PNG files and under ``figures/`` in TensorBoard."""
        self._save_curves(trainer, pl_module)
        run = self._run_dir(trainer)
        if run is None or not self._active:
            return
        X, y = self._first_test_images(trainer)
        with torch.no_grad():
            probs = pl_module(X)
        conf, preds = probs.max(1)
        figs = {"weights": figures.plot_weights(pl_module.W, self.labels),
                "predictions": figures.plot_predictions(X.cpu(), y.cpu(), preds.cpu(), self.labels, conf.cpu())}
        if self.last_confusion is not None:
            figs["confusion"] = figures.plot_confusion(self.last_confusion, self.labels)
        tb = _tensorboard(trainer)
        for name, fig in figs.items():
            png = figures.save_png(fig, run / f"{name}.png")
            if tb is not None:  # log the same PNG, without rendering or encoding the figure twice
                _add_png(tb, f"figures/{name}", png, trainer.current_epoch)
