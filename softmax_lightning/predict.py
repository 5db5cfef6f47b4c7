"""``scripts/predict.py``: classify Fashion-MNIST test images or your own image files with a trained checkpoint.

    python scripts/predict.py                         # first 16 test images, newest lightning_logs/*/last.ckpt
    python scripts/predict.py --n 8 --labels zh       # the chapter's Chinese class names
    python scripts/predict.py --explain               # also explain.png: why each prediction (evidence maps)
    python scripts/predict.py shoe.jpg shirt.png      # your photos (light backgrounds are inverted: --no-invert)
    python scripts/predict.py --json                  # machine-readable output, on stdout alone

Every option is checked before anything is loaded. Checkpoints are loaded with ``weights_only=True`` (a checkpoint
can never run code). Bad input (no checkpoint, a damaged, foreign or diverged checkpoint, a missing, unreadable or
oversized image, a bad cost matrix, an unwritable ``--out``) ends with one ``error: ...`` line and exit code 2.
Results go to stdout, notes (the checkpoint used, inverted photos, files written) to stderr; with ``--json``,
stdout holds only the JSON document and stderr stays empty. Output into a closed pipe (``| head``) ends quietly with
status 141.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import unicodedata
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from softmax_lightning.checkpoint import newest_checkpoint, read_checkpoint, run_folder_of
from softmax_lightning.data import class_names
from softmax_lightning.decisions import ABSTAIN, check_abstain_cost, decide, load_cost_matrix, parse_prior, shift_prior
from softmax_lightning.errors import UserError, one_line
from softmax_lightning.fashion_mnist import find_raw_files, load_split
from softmax_lightning.functional import evidence
from softmax_lightning.io import check_path, check_regular_file, exit_quietly_on_broken_pipe, write_error
from softmax_lightning.model import SoftmaxRegression

MAX_PIXELS = 64_000_000  # largest image accepted (8000 x 8000), checked from the header before decoding
WORK_SIDE = 256  # images are shrunk to at most this many pixels a side before padding, so padding stays small
LIGHT_BACKGROUND = 0.5  # a photo whose border median is above this is inverted (Fashion-MNIST: light on black)
TEST_IMAGES, MAX_TEST_IMAGES = 16, 10_000  # --n: by default (the chapter's grid), and at most (the test split)
GRID_MAX = 32  # predictions.png shows at most this many images (the chapter's grid: 16)
EXPLAIN_ROWS, MAX_EXPLAIN_ROWS = 8, 32  # explain.png: rows by default, and at most


def load_checkpoint(
    path: str | Path, flag: str = "--ckpt_path"
) -> tuple[SoftmaxRegression, tuple[float, float] | None]:
    """The trained model and the input standardisation it was trained with (``None``: raw [0, 1] pixels)."""
    ckpt = read_checkpoint(path, flag)
    W = ckpt["state_dict"]["W"]
    if W.shape != (28 * 28, len(class_names())):
        raise UserError(
            f"checkpoint {path} holds a {tuple(W.shape)} W; this tool needs 784 inputs (28x28 images) "
            f"and 10 Fashion-MNIST classes"
        )
    hparams = ckpt.get("hyper_parameters") or {}
    known = inspect.signature(SoftmaxRegression).parameters  # LightningCLI adds keys such as _instantiator
    try:
        model = SoftmaxRegression(**{k: v for k, v in hparams.items() if k in known})
        model.load_state_dict({k: ckpt["state_dict"][k] for k in ("W", "b")}, strict=False)  # (not the metrics)
    except (TypeError, RuntimeError, UserError) as e:
        raise UserError(f"checkpoint {path} does not fit SoftmaxRegression ({one_line(e, 200)})") from None
    model.eval()
    stats = (ckpt.get("FashionMNISTDataModule") or {}).get("input_stats")
    if stats is None:
        return model, None
    try:
        mean, std = (float(v) for v in stats)
    except (TypeError, ValueError):
        mean = std = float("nan")
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise UserError(
            f"checkpoint {path} holds bad input statistics {stats!r} (a finite mean and a positive std "
            f"are needed); pass {flag} with a .ckpt written by scripts/train.py"
        )
    return model, (mean, std)


def _grayscale(im) -> np.ndarray:
    """A PIL image as gray levels in [0, 1], scaled by its bit depth (16-bit PNGs too), shape ``(h, w)``."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grayscale (PNG's deepest)
        return np.asarray(im, dtype=np.float32) / 65535
    return np.asarray(im.convert("L"), dtype=np.float32) / 255


class Photo(NamedTuple):
    """An image file as the model sees it, and what was done to it."""

    image: Tensor  # (28, 28), float32 in [0, 1]: light object on a dark background, as Fashion-MNIST
    inverted: bool  # whether its gray levels were inverted (1 - x)
    background: float  # the file's background gray level, in [0, 1], before any inversion: its border's median


def load_photo(path: str | Path, invert: bool | None = None) -> Photo:
    """Any PNG/JPEG -> grayscale in [0, 1], inverted if asked, padded to a square with its own background, resized
    to 28x28.

    Args:
        invert: ``None`` (automatic): invert when the background (the border's median) is light, above
            ``LIGHT_BACKGROUND``: Fashion-MNIST's clothes are light on black, a photo's are mostly dark on white.
            ``True``/``False``: always/never.

    Memory stays bounded: the pixel count is checked from the header before decoding (``MAX_PIXELS``), and the
    image is shrunk to at most ``WORK_SIDE`` pixels a side before it is padded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not check_regular_file(path, fix="pass a PNG or JPEG file"):
        raise UserError(f"image {path} not found; check the path")
    try:
        with warnings.catch_warnings():  # PIL warns (on stderr) above 89M pixels and refuses above 179M:
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # both are over MAX_PIXELS, refused here
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise UserError(
                        f"{path} is {im.width}x{im.height} pixels, more than the {MAX_PIXELS} this tool "
                        f"decodes; pass a smaller image"
                    )
                px = _grayscale(ImageOps.exif_transpose(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(
            f"{path} is too large to decode ({one_line(e, 120)}); this tool decodes at most "
            f"{MAX_PIXELS} pixels: pass a smaller image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable image ({one_line(e, 120)}); pass a PNG or JPEG file") from None
    background = float(np.median(np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])))  # the photo's border
    inverted = background > LIGHT_BACKGROUND if invert is None else invert
    if inverted:
        px = 1 - px
    border = 1 - background if inverted else background
    im = Image.fromarray(px, mode="F")
    im.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.LANCZOS)  # keeps the aspect ratio; never enlarges
    side = max(im.size)
    square = Image.new("F", (side, side), border)
    square.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
    small = square.resize((28, 28), Image.Resampling.LANCZOS)
    image = torch.from_numpy(np.asarray(small, dtype=np.float32).clip(0, 1).copy())  # (28, 28)
    return Photo(image, bool(inverted), round(background, 4))


def load_image(path: str | Path, invert: bool | None = False) -> Tensor:
    """``load_photo(path, invert).image``: shape ``(28, 28)``, float32 in [0, 1] (``invert=None``: automatic)."""
    return load_photo(path, invert).image


def standardize(X: Tensor, stats: tuple[float, float] | None) -> Tensor:
    """Apply the training split's (mean, std), as the data module did during training."""
    return X if stats is None else (X - stats[0]) / stats[1]


class _Parser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one ``error: ...`` line (exit code 2), like every other refusal here."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)}; see {self.prog} --help\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(description="Classify Fashion-MNIST test images or image files with a checkpoint.")
    p.add_argument(
        "images",
        nargs="*",
        help="PNG/JPEG files to classify (default: the first --n test images); crop "
        "each so that the garment fills it, as in Fashion-MNIST",
    )
    p.add_argument(
        "--ckpt_path",
        "--ckpt",
        dest="ckpt_path",
        help="checkpoint, or 'last' (the default): the newest lightning_logs/version_*/checkpoints/last.ckpt "
        "under --root_dir",
    )
    p.add_argument(
        "--root_dir", default=".", help="the folder holding lightning_logs/ (train.py's --trainer.default_root_dir)"
    )
    p.add_argument(
        "--data.data_dir",
        "--data_dir",
        dest="data_dir",
        default="data",
        help="folder holding FashionMNIST/raw/ (as train.py's --data.data_dir)",
    )
    p.add_argument(
        "--n", type=int, help=f"how many test images, 1..{MAX_TEST_IMAGES} (default {TEST_IMAGES}, as the chapter)"
    )
    p.add_argument(
        "--invert",
        action=argparse.BooleanOptionalAction,
        help="image files only. Fashion-MNIST is light clothes on black, so by default a photo with a light "
        "background (the median of its border) is inverted; --invert always inverts, --no-invert "
        "never does",
    )
    p.add_argument(
        "--labels",
        choices=("en", "zh"),
        default="en",
        help="class names (and figure titles) in English or the chapter's Chinese",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (checkpoint, predictions with per-class logits, files "
        "written) and nothing on stderr",
    )
    p.add_argument(
        "--out", help="prediction grid PNG (default: <run folder>/predict/predictions.png); explain.png goes beside it"
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="also write explain.png: per image, the evidence maps (pixel x weight) of its 3 most probable "
        "classes and its probabilities",
    )
    p.add_argument(
        "--explain-rows",
        type=int,
        help=f"how many images explain.png shows (the first ones), 1..{MAX_EXPLAIN_ROWS} (default {EXPLAIN_ROWS})",
    )
    p.add_argument(
        "--cost-matrix",
        metavar="FILE",
        help="10x10 costs, rows true class, columns predicted, all >= 0: predict the class of least "
        "expected cost (the Bayes rule)",
    )
    p.add_argument(
        "--abstain-cost",
        type=float,
        metavar="C",
        help="the cost of abstaining (handing the image to a person): abstain where every class's expected "
        "cost is higher; without --cost-matrix a mistake costs 1, so this abstains where the top "
        "probability < 1 - C (Chow's rule)",
    )
    p.add_argument(
        "--reject-below",
        type=float,
        metavar="TAU",
        help="Chow's rule by its threshold: abstain where the top probability < TAU (the same as "
        "--abstain-cost 1-TAU; not with --cost-matrix)",
    )
    p.add_argument(
        "--prior",
        metavar="P",
        help="class frequencies where the model is used, 10 positive numbers in class order, e.g. "
        "1,1,1,1,1,1,3,1,1,1: probabilities are corrected from the training split's (uniform) "
        "frequencies before any rule",
    )
    return p


# ------------------------------------------------------------------------------------------- checks, before work
def _check_writable(path: Path, flag: str) -> None:
    """``path`` can be written: it is not a folder, and its nearest existing folder is writable (missing folders
    are made)."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name the PNG file to write")
    if os.path.lexists(path) and not path.is_file():  # /dev/null, a FIFO: never replaced by a PNG
        raise UserError(
            f"{flag} {path} is not a regular file (a device, FIFO, socket or broken link); name the PNG file to write"
        )
    folder = path.parent
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: {folder} is a file, not a folder; pass {flag} with another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write {path}: the folder {folder} is not writable; pass {flag} with a path in a writable folder"
        )


def check_options(args: argparse.Namespace) -> tuple[Path, Path | None, Path | None]:
    """Check every option before anything is loaded; return ``(checkpoint, grid PNG, explain PNG)`` to use (the
    PNGs: ``None`` when not written)."""
    for flag, value in (
        ("--ckpt_path", args.ckpt_path),
        ("--root_dir", args.root_dir),
        ("--data.data_dir", args.data_dir),
        ("--out", args.out),
        ("--cost-matrix", args.cost_matrix),
    ):
        if value is not None:
            check_path(value, flag)  # not empty, not too long for the system
    if any(not p.strip() for p in args.images):
        raise UserError("an image path is an empty string; pass the paths of PNG or JPEG files")
    for p in args.images:
        check_path(p, "image", "PNG or JPEG file")
        if not check_regular_file(Path(p), fix="pass a PNG or JPEG file"):
            raise UserError(f"image {p} not found; check the path")
    if args.n is not None and args.images:
        raise UserError("--n counts test images; with image files, every file is classified: drop --n")
    if args.n is not None and not 1 <= args.n <= MAX_TEST_IMAGES:
        raise UserError(f"--n must be in 1..{MAX_TEST_IMAGES} (the test split's size), got {args.n}")
    if args.invert is not None and not args.images:
        raise UserError("--invert/--no-invert apply to image files; the test images need no inversion: drop it")
    if args.explain_rows is not None and not args.explain:
        raise UserError("--explain-rows needs --explain")
    if args.explain_rows is not None and not 1 <= args.explain_rows <= MAX_EXPLAIN_ROWS:
        raise UserError(f"--explain-rows must be in 1..{MAX_EXPLAIN_ROWS}, got {args.explain_rows}")
    args.abstain_cost = None if args.abstain_cost is None else check_abstain_cost(args.abstain_cost)
    if args.reject_below is not None:  # Chow's rule by its threshold: --abstain-cost 1-TAU under 0/1 costs
        if not 0 <= args.reject_below <= 1:
            raise UserError(f"--reject-below must be in [0, 1], got {args.reject_below}")
        if args.cost_matrix or args.abstain_cost is not None:
            raise UserError(
                "--reject-below TAU is Chow's rule for 0/1 costs (the same as --abstain-cost 1-TAU); "
                "pass only one of them, and with --cost-matrix use --abstain-cost"
            )
        args.abstain_cost = 1.0 - args.reject_below
    args.prior = parse_prior(args.prior) if args.prior is not None else None
    args.cost_matrix = load_cost_matrix(args.cost_matrix) if args.cost_matrix else None
    if args.images and args.out and not args.explain:
        raise UserError(
            "--out names the prediction grid, drawn for test images only; with image files, add "
            "--explain (explain.png goes beside --out) or drop --out"
        )
    out = Path(args.out) if args.out else None
    if out is not None and args.explain and out.name == "explain.png":
        raise UserError(f"--out {out} is where --explain writes explain.png; name the grid differently")
    # "last": the newest run's last.ckpt, as train.py's --ckpt_path last (found by name only: nothing loaded yet)
    ckpt = newest_checkpoint(args.root_dir) if args.ckpt_path in (None, "last") else Path(args.ckpt_path)
    if out is None:  # beside the run's files: <run>/predict/ (a checkpoint outside a run folder: beside it)
        out = (run_folder_of(ckpt) or ckpt.resolve().parent) / "predict" / "predictions.png"
    grid = None if args.images else out
    explain = out.with_name("explain.png") if args.explain else None
    for path in (grid, explain):
        if path is not None:
            _check_writable(path, "--out")
    return ckpt, grid, explain


# ------------------------------------------------------------------------------------------------- the work
def _save(fig, path: Path) -> None:
    from softmax_lightning import figures

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    figures.save_png(fig, path)


def _short(name: str, width: int = 24) -> str:
    """A file name cut to ``width`` characters for a figure title."""
    return name if len(name) <= width else name[: width - 1] + "…"


def predict(args: argparse.Namespace) -> dict[str, Any]:
    """Check the options, run the predictions, write the figures, print the results; return the printed report."""
    ckpt, grid_png, explain_png = check_options(args)
    model, stats = load_checkpoint(ckpt)  # refuses anything but a regular, safely loadable checkpoint file
    names = class_names(args.labels)
    photos = [load_photo(p, args.invert) for p in args.images]
    if photos:
        X = torch.stack([ph.image for ph in photos])  # (n, 28, 28)
        y = None
    else:
        find_raw_files(args.data_dir)
        images, labels = load_split(args.data_dir, "test")  # only the test split: no need to parse the 60k
        n = args.n or TEST_IMAGES
        X, y = images[:n].float().div(255), labels[:n]  # (n, 28, 28) in [0, 1], as the data module
    Xs = standardize(X, stats)  # what the model computes with
    with torch.no_grad():
        logits = model.logits(Xs)  # (n, 10)
        probs = model(Xs)  # (n, 10)
    if not (torch.isfinite(probs).all() and torch.isfinite(logits).all()):  # never print nan (and invalid JSON)
        raise UserError(
            f"checkpoint {ckpt} gives non-finite probabilities (its weights are too large: training "
            f"diverged); pass --ckpt_path with an earlier checkpoint"
        )
    if args.prior is not None:
        probs = shift_prior(probs, args.prior)  # the deployment's class frequencies; the training split's are uniform
    preds = decide(probs, args.cost_matrix, args.abstain_cost)
    name = lambda k: "(abstain)" if k == ABSTAIN else names[k]  # noqa: E731
    records = []
    for i in range(len(X)):
        top = probs[i].topk(3)
        k = int(preds[i])
        rec = {
            "image": args.images[i] if args.images else i,
            "predicted": name(k),  # p: of the class decided on
            "probability": round(float(probs[i].max() if k == ABSTAIN else probs[i, k]), 4),
            "top3": [{"class": names[int(k)], "probability": round(float(p), 4)} for p, k in zip(*top)],
            "logits": {names[k]: round(float(v), 4) for k, v in enumerate(logits[i])},
        }
        if y is not None:
            rec["true"] = names[int(y[i])]
        if photos:
            rec.update(inverted=photos[i].inverted, background=photos[i].background)
        records.append(rec)
    written = _draw(args, X, y, preds, probs, logits, model.W.detach(), Xs, photos, grid_png, explain_png)
    report = {"checkpoint": str(ckpt), "predictions": records}
    if written:
        report["figures"] = {k: str(v) for k, v in written.items()}
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1, allow_nan=False))
    else:
        _print_table(report, args, photos)
    return report


def _draw(args, X, y, preds, probs, logits, W, Xs, photos, grid_png, explain_png) -> dict[str, Path]:
    """Write predictions.png (test images) and explain.png (``--explain``); return ``{figure: path}``."""
    from softmax_lightning import figures

    written = {}
    if grid_png is not None:
        k = min(len(X), GRID_MAX)
        _save(
            figures.plot_predictions(X[:k], y[:k], preds[:k].clamp_min(0), args.labels, probs[:k].max(1).values),
            grid_png,
        )
        written["predictions"] = grid_png
    if explain_png is not None:
        k = min(len(X), args.explain_rows or EXPLAIN_ROWS)
        captions = None
        if photos:
            inverted = figures.TEXT[figures.figure_language(args.labels)]["inverted"]
            captions = [
                _short(Path(p).name) + (f"\n{inverted}" if ph.inverted else "") for p, ph in zip(args.images, photos)
            ]
        fig = figures.plot_explain(
            X[:k], logits[:k], evidence(Xs[:k], W), args.labels, captions=captions, trues=None if y is None else y[:k]
        )
        _save(fig, explain_png)
        written["explain"] = explain_png
    return written


# ------------------------------------------------------------------------------------------------- the output
def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide and full-width characters (CJK) take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, width: int, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (``right``: aligned right)."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def _print_table(report: dict[str, Any], args: argparse.Namespace, photos: list[Photo]) -> None:
    """The checkpoint and notes on stderr, the table on stdout, the files written on stderr."""
    records = report["predictions"]
    print(f"checkpoint: {report['checkpoint']}", file=sys.stderr)
    for path, ph in zip(args.images, photos):
        if ph.inverted and args.invert:
            print(f"note: {path}: inverted (--invert)", file=sys.stderr)
        elif ph.inverted:
            print(
                f"note: {path}: light background (border median {ph.background:.2f}): inverted to light on dark, "
                f"as Fashion-MNIST's images are (--no-invert keeps it as it is)",
                file=sys.stderr,
            )
    sys.stderr.flush()
    names = [*class_names(args.labels), "(abstain)"]
    w = max(display_width(n) for n in names) + 1  # one column width for every class name
    if photos:
        iw = max(display_width(str(r["image"])) for r in records)
        heads = "".join(pad(h, w) + f"{'p':>6}  " for h in ("top 1", "top 2", "top 3"))
        print((pad("image", iw) + "  " + heads).rstrip())
        for r in records:
            print(
                pad(str(r["image"]), iw)
                + "  "
                + "".join(pad(t["class"], w) + f"{t['probability']:6.3f}  " for t in r["top3"]).rstrip()
            )
    else:
        print(f"{'#':>4}  {pad('true', w)} {pad('predicted', w)} {'p':>6}")
        for r in records:
            mark = "" if r["true"] == r["predicted"] or r["predicted"] == "(abstain)" else "  <- wrong"
            print(f"{r['image']:>4}  {pad(r['true'], w)} {pad(r['predicted'], w)} {r['probability']:6.3f}{mark}")
        answered = [r for r in records if r["predicted"] != "(abstain)"]  # an abstention is handed to a person
        if not answered:
            print(f"all {len(records)} abstained: no accuracy to report")
        else:
            acc = sum(r["true"] == r["predicted"] for r in answered) / len(answered)
            which = (
                f"these {len(records)}"
                if len(answered) == len(records)
                else f"the {len(answered)} answered ({len(records) - len(answered)} of {len(records)} abstained)"
            )
            print(f"accuracy on {which}: {acc:.3f}")
        if len(answered) < len(records):  # p is the top probability there: say why a confident image was not answered
            rule = (
                f"every class's expected cost (--cost-matrix) is above --abstain-cost {args.abstain_cost:g}"
                if args.cost_matrix is not None
                else f"the top probability p is below {1 - args.abstain_cost:g} (Chow's rule)"
            )
            print(f"(abstain): {rule}")
    sys.stdout.flush()  # before the notes below, so that they follow the table in a terminal
    for key, path in report.get("figures", {}).items():
        extra = (
            f" (the first {min(len(records), GRID_MAX)} images)"
            if key == "predictions" and len(records) > GRID_MAX
            else ""
        )
        if key == "explain" and len(records) > (args.explain_rows or EXPLAIN_ROWS):
            extra = f" (the first {args.explain_rows or EXPLAIN_ROWS} images; --explain-rows shows more)"
        print(f"wrote {path}{extra}", file=sys.stderr)


@exit_quietly_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``scripts/predict.py``; exit code 2 with one ``error:`` line on bad input, 141 when stdout is
    a pipe that closed early."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0), or a usage error (2) whose one line argparse has printed
        return e.code if isinstance(e.code, int) else 2
    try:
        predict(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0
