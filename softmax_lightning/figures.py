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
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from softmax_lightning.data import class_names
from softmax_lightning.io import atomic_write_bytes

log = logging.getLogger(__name__)
RIGHT, WRONG, UNKNOWN = (0.1, 0.7, 0.2), (0.9, 0.1, 0.1), (0.2, 0.4, 0.8)  # a prediction: right, wrong, no truth


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


@cache
def _font_for(labels: str) -> tuple[str, str | None]:
    """``(labels, font family)`` actually usable: ``zh`` falls back to English (one warning) without a CJK font."""
    if labels != "zh":
        return "en", None
    from matplotlib import font_manager

    cjk = sorted(
        {f.name for f in font_manager.fontManager.ttflist if "CJK" in f.name},
        key=lambda name: ("Sans" not in name, "SC" not in name, name),
    )  # prefer a sans-serif face
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

    def __init__(self, max_epochs: int, val_label: str = "val acc") -> None:
        """``val_label`` names the ``val_acc`` curve: "test acc" when validation is the test split (the default data
        module's, and the chapter's name for that curve)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(4.5, 3.2))
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.subplots()
        labels = {"val_acc": val_label}
        self.lines = [
            self.ax.plot([], [], fmt, label=labels.get(key, label), animated=True)[0] for key, label, fmt in self.SERIES
        ]
        self.ax.set(xlabel="epoch", xlim=(1, max(2, max_epochs)), ylim=(0.0, 1.0))
        self.ax.legend(
            handles=self.lines, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=9
        )  # above the axes; its keys are copies, not animated: drawn once, in the background
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


def plot_predictions(images: Tensor, trues: Tensor, preds: Tensor, labels: str = "en", probs: Tensor | None = None):
    """``predict_ch3``'s grid: 2 rows, each image titled true over predicted; wrong predictions in red."""
    n = len(images)
    with new_figure((1.05 * max(2, -(-n // 2)), 3.4), labels) as (fig, names):
        ax, anchors = _mosaic_axes(fig, images.detach().float().cpu().reshape(-1, 28, 28), nrow=2, gap=14, cmap="gray")
        for i, (x, y) in enumerate(anchors):
            t, p = int(trues[i]), int(preds[i])
            extra = f" {float(probs[i]):.0%}" if probs is not None else ""
            ax.text(
                x,
                y,
                f"{names[t]}\n{names[p]}{extra}",
                ha="center",
                va="bottom",
                fontsize=8,
                color="black" if t == p else "red",
            )
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
        fig.suptitle("W's columns: what each class looks for (red: positive weight, blue: negative)", fontsize=10)
    return fig


def plot_confusion(matrix: Tensor, labels: str = "en", title: str = "validation confusion matrix"):
    """Counts with true classes as rows and predicted as columns, named."""
    m = matrix.detach().cpu().long()
    thresh = m.max().item() / 2
    with new_figure((7.0, 6.0), labels) as (fig, names):
        ax = fig.subplots()
        ax.imshow(m.numpy(), cmap="Blues")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(
                    j,
                    i,
                    str(int(m[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if m[i, j] > thresh else "black",
                )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=title)
        fig.subplots_adjust(left=0.2, right=0.98, bottom=0.2, top=0.94)
    return fig


# ---------------------------------------------------------------------------------------- why this prediction?
TEXT = {  # the figures' words, in the language of their class names
    "en": {
        "explain": "Why this prediction? Evidence = pixel × the class's weight (red: for the class, blue: against);"
        "\neach map summed, plus b, is the class's logit",
        "input": "the 28×28 input\nthe model saw",
        "evidence": "evidence for the 3 most probable classes",
        "probs": "softmax probabilities",
        "true": "true: {}",
        "test_image": "test image #{}",
        "inverted": "(inverted)",
        "map": "{rank}. {name}\nlogit {logit:.1f}, p {p:.2f}",
        "confusions": "The most confused pairs: the pixels that separate them",
        "difference": "W[:, {a}] − W[:, {b}]",
        "difference_key": "red: for {a}\nblue: for {b}",
        "mistakes": "true {a}, predicted {b}: {n}",
        "none": "none among the validation images",
    },
    "zh": {
        "explain": "为什么这样预测？证据 = 像素 × 该类别的权重（红：支持该类别，蓝：反对）；"
        "\n每张图求和再加上 b，就是该类别的 logit",
        "input": "模型看到的\n28×28 输入",
        "evidence": "概率最高的 3 个类别的证据",
        "probs": "softmax 概率",
        "true": "真实：{}",
        "test_image": "测试图像 #{}",
        "inverted": "（已反相）",
        "map": "{rank}. {name}\nlogit {logit:.1f}，概率 {p:.2f}",
        "confusions": "最易混淆的类别对：区分它们的像素",
        "difference": "W[:, {a}] − W[:, {b}]",
        "difference_key": "红：支持{a}\n蓝：支持{b}",
        "mistakes": "真实：{a}，预测为：{b}（{n}）",
        "none": "验证图像中没有",
    },
}


def figure_language(labels: str) -> str:
    """The language a figure for ``labels`` is drawn in: ``zh`` needs a CJK font, else English (one warning)."""
    return _font_for(labels)[0]


def plot_explain(
    images: Tensor,
    logits: Tensor,
    evidence: Tensor,
    labels: str = "en",
    captions: Sequence[str] | None = None,
    trues: Tensor | None = None,
    top: int = 3,
):
    """One row per image: the image, the evidence maps of its ``top`` most probable classes on one symmetric colour
    scale, and its softmax probabilities as bars.

    Args:
        images: the inputs as the model saw them, in [0, 1], shape ``(n, 28, 28)`` (or ``(n, 1, 28, 28)``).
        logits: shape ``(n, classes)``.
        evidence: ``functional.evidence(X, W)``, shape ``(n, classes, 28, 28)``.
        captions: a first title line per image (a file name); default ``test image #i``.
        trues: true classes ``(n,)`` when known: their bars are green, a wrong prediction's red (without: blue).
    """
    from softmax_lightning.functional import softmax

    imgs, z, ev = (t.detach().float().cpu() for t in (images, logits, evidence))
    n, classes = z.shape
    imgs = imgs.reshape(n, *ev.shape[-2:])
    probs = softmax(z)  # (n, classes)
    text = TEXT[figure_language(labels)]
    head, row = 1.2, 1.95  # inches: the titles above the first row's titles, each row (its map titles included)
    height = head + row * n + 0.2
    with new_figure((10.6, height), labels) as (fig, names):
        grid = fig.add_gridspec(
            n,
            top + 4,
            width_ratios=[1] * (top + 1) + [0.06, 0.62, 1.3],
            wspace=0.3,
            hspace=0.62,
            left=0.02,
            right=0.98,
            top=1 - head / height,
            bottom=0.35 / height,
        )
        for i in range(n):
            caption = captions[i] if captions is not None else text["test_image"].format(i)
            if trues is not None:
                caption += "\n" + text["true"].format(names[int(trues[i])])
            ax = fig.add_subplot(grid[i, 0])
            ax.imshow(imgs[i].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(caption, fontsize=9)
            ax.axis("off")
            ranked = probs[i].argsort(descending=True)[:top].tolist()
            lim = float(ev[i, ranked].abs().max()) or 1.0  # one symmetric scale for the row's maps
            for r, k in enumerate(ranked):
                ax = fig.add_subplot(grid[i, r + 1])
                im = ax.imshow(ev[i, k].numpy(), cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest")
                ax.set_title(
                    text["map"].format(rank=r + 1, name=names[k], logit=float(z[i, k]), p=float(probs[i, k])),
                    fontsize=9,
                )
                ax.set_xticks([]), ax.set_yticks([])
            cbar = fig.colorbar(im, cax=fig.add_subplot(grid[i, top + 1]))
            cbar.ax.tick_params(labelsize=7)
            ax = fig.add_subplot(grid[i, top + 3])  # (column top + 2 is a gap for the class names)
            colours = ["0.7"] * classes
            pred = int(ranked[0])
            right = trues is None or int(trues[i]) == pred
            colours[pred] = UNKNOWN if trues is None else RIGHT if right else WRONG
            if not right:
                colours[int(trues[i])] = RIGHT
            ax.barh(range(classes), probs[i].numpy(), color=colours)
            ax.set_yticks(range(classes), names, fontsize=8 if text is TEXT["en"] else 7)  # CJK glyphs are taller
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"], fontsize=7)
            ax.tick_params(axis="y", length=0)
            for spine in ("top", "right"):
                ax.spines[spine].set_visible(False)
        fig.suptitle(text["explain"], fontsize=10, y=1 - 0.08 / height, va="top")
        _column_headings(fig, grid, top, text, 1 - 0.78 / height)
    return fig


def _column_headings(fig, grid, top: int, text: dict[str, str], y: float) -> None:
    """Headings above ``plot_explain``'s columns: input, evidence maps, probabilities (figure coordinates)."""
    boxes = [grid[0, c].get_position(fig) for c in range(top + 4)]
    for (x0, x1), key in (
        ((boxes[0].x0, boxes[0].x1), "input"),
        ((boxes[1].x0, boxes[top].x1), "evidence"),
        ((boxes[top + 2].x0, boxes[top + 3].x1), "probs"),
    ):
        fig.text((x0 + x1) / 2, y, text[key], ha="center", va="bottom", fontsize=9, fontweight="bold")


def plot_confusions(
    W: Tensor,
    pairs: Sequence[tuple[int, int]],
    examples: dict[tuple[int, int], Tensor],
    labels: str = "en",
    matrix: Tensor | None = None,
    per_direction: int = 4,
):
    """For each pair ``(a, b)``: the difference template ``W[:, a] - W[:, b]`` (red: pixels that favour ``a``, blue:
    ``b``; symmetric colour scale) beside a few validation images of ``a`` predicted as ``b``, and of ``b`` as ``a``.

    Args:
        W: weights ``(784, classes)``.
        pairs: class pairs, e.g. ``confusions.most_confused_pairs(matrix)``.
        examples: ``{(true, predicted): images (m, 28, 28)}``, e.g. ``ConfusionExamples.examples``.
        matrix: the confusion matrix (true rows); when given, titles say how many images each mistake counted.
        per_direction: images shown per direction.
    """
    w = W.detach().float().cpu()
    side = round(w.shape[0] ** 0.5)
    text = TEXT[figure_language(labels)]
    head, row = 0.5, 2.9  # inches: the title, each pair
    with new_figure((2.9 + 1.1 * per_direction, head + row * max(1, len(pairs))), labels) as (fig, names):
        title, *rows = fig.subfigures(1 + len(pairs), 1, height_ratios=[head] + [row] * len(pairs), squeeze=False)[:, 0]
        title.suptitle(text["confusions"], fontsize=11, y=0.5, va="center")
        for sub, (a, b) in zip(rows, pairs):
            grid = sub.add_gridspec(
                2,
                per_direction + 2,
                width_ratios=[1.15, 1.15] + [1] * per_direction,
                left=0.03,
                right=0.99,
                top=0.9,
                bottom=0.14,
                hspace=0.35,
                wspace=0.1,
            )
            diff = (w[:, a] - w[:, b]).reshape(side, side)  # (784,) -> (28, 28)
            lim = float(diff.abs().max()) or 1.0  # symmetric: white is 0, no preference
            ax = sub.add_subplot(grid[:, :2])
            ax.imshow(diff.numpy(), cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(text["difference"].format(a=names[a], b=names[b]), fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel(text["difference_key"].format(a=names[a], b=names[b]), fontsize=8.5)
            for r, (t, p) in enumerate(((a, b), (b, a))):
                images = examples.get((t, p), torch.zeros(0, side, side))[:per_direction]
                count = f"{int(matrix[t, p])} / {int(matrix[t].sum())}" if matrix is not None else len(images)
                axes = [sub.add_subplot(grid[r, c + 2]) for c in range(per_direction)]
                for ax, image in zip(axes, images):
                    ax.imshow(image.float().numpy(), cmap="gray", interpolation="nearest")
                for ax in axes:
                    ax.axis("off")
                title = text["mistakes"].format(a=names[t], b=names[p], n=count)
                axes[0].set_title(title if len(images) else f"{title} ({text['none']})", fontsize=9, loc="left")
    return fig
