"""The chapter's pictures, headless: Animator curves, ``predict_ch3``'s grid, W's templates, a confusion matrix.

Two renderers, for two budgets:
* ``*_image`` functions build small ``(3, H, W)`` tensors without matplotlib; they are cheap enough to log to
  TensorBoard every epoch;
* ``plot_*`` functions draw the labelled matplotlib figures written as PNG files (and logged once at the end).
Files are written atomically. Matplotlib is imported lazily: it costs about a second.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from softmax_lightning.data import class_names
from softmax_lightning.io import atomic_write_bytes

log = logging.getLogger(__name__)
RIGHT, WRONG = (0.1, 0.7, 0.2), (0.9, 0.1, 0.1)


def _cell(i: int, nrow: int, h: int, w: int, pad: int, top: int) -> tuple[int, int]:
    """Top-left pixel ``(y, x)`` of image ``i`` in ``tile``'s mosaic."""
    r, c = divmod(i, nrow)
    return pad + top + r * (h + pad + top), pad + c * (w + pad)


def tile(images: Tensor, nrow: int, pad: int = 2, value: float = 1.0, top: int = 0) -> Tensor:
    """``(n, h, w)`` grayscale images -> one mosaic, row-major, ``nrow`` images per row, ``pad`` pixels between
    them and ``top`` more blank rows above each row of images (room for titles):
    ``(rows*(h+pad+top)+pad, nrow*(w+pad)+pad)``."""
    n, h, w = images.shape
    rows = -(-n // nrow)
    out = images.new_full((rows * (h + pad + top) + pad, nrow * (w + pad) + pad), value)
    for i in range(n):
        y, x = _cell(i, nrow, h, w, pad, top)
        out[y : y + h, x : x + w] = images[i]
    return out


def _unit(x: Tensor) -> Tensor:
    """Scale each image ``(n, ...)`` to [0, 1] by its own min and max."""
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(x.shape)


def templates_image(W: Tensor) -> Tensor:
    """The ten columns of ``W`` (784, 10) as 28x28 templates, 2 rows of 5 in class order, shape ``(3, H, W)``."""
    t = _unit(W.detach().float().cpu().T.reshape(-1, 28, 28))  # (784, 10) -> (10, 28, 28)
    return tile(t, nrow=5, value=0.5).expand(3, -1, -1)


def predictions_image(images: Tensor, trues: Tensor, preds: Tensor) -> Tensor:
    """Images ``(n, 28, 28)`` in 2 rows, each framed green (right) or red (wrong): shape ``(3, H, W)``."""
    imgs = images.detach().float().cpu()
    n = len(imgs)
    framed = torch.ones(n, 3, 32, 32)
    colour = torch.tensor([RIGHT if t == p else WRONG for t, p in zip(trues.tolist(), preds.tolist())])
    framed[:] = colour[:, :, None, None]
    framed[:, :, 2:30, 2:30] = _unit(imgs)[:, None]
    return torch.stack([tile(framed[:, c], nrow=max(1, n // 2)) for c in range(3)])


def confusion_image(matrix: Tensor, scale: int = 12) -> Tensor:
    """A row-normalised confusion matrix (true rows, predicted columns) as a blue heat map ``(3, 10s, 10s)``."""
    m = matrix.detach().float().cpu()
    m = m / m.sum(1, keepdim=True).clamp_min(1)
    big = m.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return torch.stack([1 - 0.9 * big, 1 - 0.6 * big, 1 - 0.2 * big])


@lru_cache(maxsize=None)
def _font_for(labels: str) -> tuple[str, str | None]:
    """``(labels, font family)`` actually usable: ``zh`` falls back to English (one warning) without a CJK font."""
    if labels != "zh":
        return "en", None
    from matplotlib import font_manager

    cjk = sorted({f.name for f in font_manager.fontManager.ttflist if "CJK" in f.name},
                 key=lambda name: ("Sans" not in name, "SC" not in name, name))  # prefer a sans-serif face
    if cjk:
        return "zh", cjk[0]
    log.warning("no CJK font found (install fonts-noto-cjk): figure labels fall back to English")
    return "en", None


@contextmanager
def new_figure(figsize: tuple[float, float], labels: str = "en"):
    """A matplotlib ``Figure`` and the class names for ``labels``, for a ``with`` block that draws it.

    No pyplot and no global state: the figure renders with Agg whatever the process's backend is (a notebook keeps
    its inline plots), and a CJK font for ``zh`` applies only to the texts created inside the block (``rc_context``).
    """
    import matplotlib
    from matplotlib.figure import Figure

    labels, family = _font_for(labels)
    with matplotlib.rc_context({"font.family": [family, "DejaVu Sans"]} if family else {}):
        yield Figure(figsize=figsize), class_names(labels)


def save_png(fig, path: str | Path | None = None, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes; write them atomically to ``path`` if given."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


class CurvesPlot:
    """The chapter's Animator as a file: train loss, train acc and val acc against epoch, x from 1 to max_epochs.

    Redrawn after every epoch cheaply: axes, ticks and legend are drawn once and cached (Agg "blitting"); an
    update restores that background, draws only the three lines and writes a fast-compressed PNG (about 10 ms;
    a full redraw happens only when the y-range grows).
    """

    SERIES = (("train_loss", "train loss", "-"), ("train_acc", "train acc", "m--"), ("val_acc", "val acc", "g-."))

    def __init__(self, max_epochs: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(4.5, 3.2))
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.subplots()
        self.lines = [self.ax.plot([], [], fmt, label=label, animated=True)[0] for _, label, fmt in self.SERIES]
        self.ax.set(xlabel="epoch", xlim=(1, max(2, max_epochs)), ylim=(0.0, 1.0))
        self.ax.legend(handles=self.lines, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False,
                       fontsize=9)  # above the axes; its keys are copies, not animated: drawn once, in the background
        self.ax.grid(True)
        self.fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.88)
        self._background = None

    def save(self, history: Sequence[dict[str, float]], path: str | Path) -> bytes:
        """Redraw the lines from ``history`` (rows with ``epoch`` and the series' keys), write the PNG, return it."""
        top = 1.0
        for (key, _, _), line in zip(self.SERIES, self.lines):
            pts = [(row["epoch"], row[key]) for row in history if key in row]
            line.set_data([p[0] for p in pts], [p[1] for p in pts])
            top = max([top] + [p[1] for p in pts])
        ylim = (0.0, top * 1.05 if top > 1 else 1.0)
        if self._background is None or ylim != self.ax.get_ylim():
            self.ax.set_ylim(ylim)
            self.canvas.draw()  # the static parts, without the animated lines and legend
            self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self.canvas.restore_region(self._background)
        for line in self.lines:
            self.ax.draw_artist(line)
        from PIL import Image

        buf = io.BytesIO()
        image = Image.frombuffer("RGBA", self.canvas.get_width_height(), self.canvas.buffer_rgba())
        image.save(buf, format="png", compress_level=1)
        atomic_write_bytes(path, buf.getvalue())
        return buf.getvalue()


def _mosaic_axes(fig, images: Tensor, nrow: int, gap: int, cmap: str, **imshow) -> tuple[object, list]:
    """One axes showing ``images`` ``(n, 28, 28)`` as a grid with ``gap`` blank pixels above each row (for titles);
    returns the axes and each image's title anchor ``(x, y)`` in data coordinates.

    One ``imshow`` of a mosaic instead of a subplot per image: about 4x faster to build and render.
    """
    import matplotlib

    n, (h, w), pad = len(images), images.shape[1:], 2
    ncol = -(-n // nrow)
    mosaic = tile(images.float(), ncol, pad=pad, value=float("nan"), top=gap - pad)
    anchors = []
    for i in range(n):
        y, x = _cell(i, ncol, h, w, pad, gap - pad)
        anchors.append((x + w / 2, y - 1))
    ax = fig.add_axes((0.01, 0.02, 0.98, 0.86))
    cm = matplotlib.colormaps[cmap].with_extremes(bad="white")  # NaN padding: white
    ax.imshow(mosaic.numpy(), cmap=cm, interpolation="nearest", **imshow)
    ax.axis("off")
    return ax, anchors


def plot_predictions(images: Tensor, trues: Tensor, preds: Tensor, labels: str = "en",
                     probs: Tensor | None = None):
    """``predict_ch3``'s grid: 2 rows, each image titled true over predicted; wrong predictions in red."""
    n = len(images)
    with new_figure((1.05 * max(2, -(-n // 2)), 3.4), labels) as (fig, names):
        ax, anchors = _mosaic_axes(fig, images.detach().float().cpu().reshape(-1, 28, 28), nrow=2, gap=14,
                                   cmap="gray")
        for i, (x, y) in enumerate(anchors):
            t, p = int(trues[i]), int(preds[i])
            extra = f" {float(probs[i]):.0%}" if probs is not None else ""
            ax.text(x, y, f"{names[t]}\n{names[p]}{extra}", ha="center", va="bottom", fontsize=8,
                    color="black" if t == p else "red")
        fig.suptitle("true / predicted (red: wrong)", fontsize=9)
    return fig


def plot_weights(W: Tensor, labels: str = "en"):
    """The ten columns of ``W`` as 28x28 templates (red: positive weight, blue: negative), one per class."""
    w = W.detach().float().cpu()
    lim = float(w.abs().max())
    with new_figure((7.5, 3.6), labels) as (fig, names):
        ax, anchors = _mosaic_axes(fig, w.T.reshape(-1, 28, 28), nrow=2, gap=8, cmap="bwr", vmin=-lim, vmax=lim)
        for (x, y), name in zip(anchors, names):  # (784, 10) -> (10, 28, 28): one template per class
            ax.text(x, y, name, ha="center", va="bottom", fontsize=9)
        fig.suptitle("W's columns: what each class looks for", fontsize=10)
    return fig


def plot_confusion(matrix: Tensor, labels: str = "en", title: str = "validation confusion matrix"):
    """Counts with true classes as rows and predicted as columns, named."""
    m = matrix.detach().cpu().long()
    thresh = m.max().item() / 2
    with new_figure((7.0, 6.0), labels) as (fig, names):
        ax = fig.subplots()
        ax.imshow(m, cmap="Blues")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > thresh else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=title)
        fig.subplots_adjust(left=0.2, right=0.98, bottom=0.2, top=0.94)
    return fig
