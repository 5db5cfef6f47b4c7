"""``scripts/predict.py``: classify Fashion-MNIST test images or your own image files with a trained checkpoint.

    python scripts/predict.py                         # first 16 test images, newest lightning_logs/*/last.ckpt
    python scripts/predict.py --n 8 --labels zh       # the chapter's Chinese class names
    python scripts/predict.py shoe.jpg shirt.png --invert   # your photos (dark object on light background)
    python scripts/predict.py --json                  # machine-readable output

Checkpoints are loaded with ``weights_only=True`` (a checkpoint can never run code). Bad input (no checkpoint, a
damaged, foreign or diverged checkpoint, a missing, unreadable or oversized image, a bad cost matrix) ends with one
``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from softmax_lightning.checkpoint import newest_checkpoint, read_checkpoint
from softmax_lightning.data import check_regular_file, class_names, find_raw_files, load_split
from softmax_lightning.decisions import (ABSTAIN, bayes_decisions, check_abstain_cost, decide,  # noqa: F401
                                         load_cost_matrix, parse_prior, shift_prior)
from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import write_error
from softmax_lightning.model import SoftmaxRegression

MAX_PIXELS = 64_000_000  # largest image accepted (8000 x 8000), checked from the header before decoding
WORK_SIDE = 256  # images are shrunk to at most this many pixels a side before padding, so padding stays small


def load_checkpoint(path: str | Path, flag: str = "--ckpt_path") -> tuple[SoftmaxRegression, tuple[float, float] | None]:
    """The trained model and the input standardisation it was trained with (``None``: raw [0, 1] pixels)."""
    ckpt = read_checkpoint(path, flag)
    W = ckpt["state_dict"]["W"]
    if W.shape != (28 * 28, len(class_names())):
        raise UserError(f"checkpoint {path} holds a {tuple(W.shape)} W; this tool needs 784 inputs (28x28 images) "
                        f"and 10 Fashion-MNIST classes")
    hparams = ckpt.get("hyper_parameters") or {}
    known = inspect.signature(SoftmaxRegression).parameters  # LightningCLI adds keys such as _instantiator
    try:
        model = SoftmaxRegression(**{k: v for k, v in hparams.items() if k in known})
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, UserError) as e:
        raise UserError(f"checkpoint {path} does not fit SoftmaxRegression ({one_line(e, 200)})") \
            from None
    model.eval()
    stats = (ckpt.get("FashionMNISTDataModule") or {}).get("input_stats")
    if stats is None:
        return model, None
    try:
        mean, std = (float(v) for v in stats)
    except (TypeError, ValueError):
        mean = std = float("nan")
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise UserError(f"checkpoint {path} holds bad input statistics {stats!r} (a finite mean and a positive std "
                        f"are needed); pass {flag} with a .ckpt written by scripts/train.py")
    return model, (mean, std)


def _grayscale(im) -> np.ndarray:
    """A PIL image as gray levels in [0, 1], scaled by its bit depth (16-bit PNGs too), shape ``(h, w)``."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grayscale (PNG's deepest)
        return np.asarray(im, dtype=np.float32) / 65535
    return np.asarray(im.convert("L"), dtype=np.float32) / 255


def load_image(path: str | Path, invert: bool = False) -> Tensor:
    """Any PNG/JPEG -> grayscale in [0, 1], padded to a square with its own background, resized to 28x28.

    Memory stays bounded: the pixel count is checked from the header before decoding (``MAX_PIXELS``), and the
    image is shrunk to at most ``WORK_SIDE`` pixels a side before it is padded.

    Returns:
        Shape ``(28, 28)``, float32.
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
                    raise UserError(f"{path} is {im.width}x{im.height} pixels, more than the {MAX_PIXELS} this tool "
                                    f"decodes; pass a smaller image")
                px = _grayscale(ImageOps.exif_transpose(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"{path} is too large to decode ({one_line(e, 120)}); this tool decodes at most "
                        f"{MAX_PIXELS} pixels: pass a smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable image ({one_line(e, 120)}); pass a PNG or JPEG "
                        f"file") from None
    if invert:
        px = 1 - px
    border = float(np.median(np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])))  # the photo's background
    im = Image.fromarray(px, mode="F")
    im.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.LANCZOS)  # keeps the aspect ratio; never enlarges
    side = max(im.size)
    square = Image.new("F", (side, side), border)
    square.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
    small = square.resize((28, 28), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(small, dtype=np.float32).clip(0, 1).copy())  # (28, 28)


def standardize(X: Tensor, stats: tuple[float, float] | None) -> Tensor:
    """Apply the training split's (mean, std), as the data module did during training."""
    return X if stats is None else (X - stats[0]) / stats[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Classify Fashion-MNIST test images or image files with a checkpoint.")
    p.add_argument("images", nargs="*", help="PNG/JPEG files to classify (default: the first --n test images)")
    p.add_argument("--ckpt_path", "--ckpt", dest="ckpt_path",
                   help="checkpoint, or 'last' (the default): the newest lightning_logs/version_*/checkpoints/last.ckpt "
                        "under --root_dir")
    p.add_argument("--root_dir", default=".", help="the folder holding lightning_logs/ (train.py's "
                                                   "--trainer.default_root_dir)")
    p.add_argument("--data.data_dir", "--data_dir", dest="data_dir", default="data",
                   help="folder holding FashionMNIST/raw/ (as train.py's --data.data_dir)")
    p.add_argument("--n", type=int, default=16, help="how many test images (default 16, as the chapter)")
    p.add_argument("--invert", action="store_true", help="photos of dark objects on light backgrounds")
    p.add_argument("--labels", choices=("en", "zh"), default="en")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", help="prediction grid PNG (default: <run folder>/predict/predictions.png)")
    p.add_argument("--cost-matrix", metavar="FILE",
                   help="10x10 costs, rows true class, columns predicted, all >= 0: predict the class of least "
                        "expected cost (the Bayes rule)")
    p.add_argument("--abstain-cost", type=float, metavar="C",
                   help="the cost of abstaining (handing the image to a person): abstain where every class's expected "
                        "cost is higher; without --cost-matrix a mistake costs 1, so this abstains where the top "
                        "probability < 1 - C (Chow's rule)")
    p.add_argument("--reject-below", type=float, metavar="TAU",
                   help="Chow's rule by its threshold: abstain where the top probability < TAU (the same as "
                        "--abstain-cost 1-TAU; not with --cost-matrix)")
    p.add_argument("--prior", metavar="P",
                   help="class frequencies where the model is used, 10 positive numbers in class order, e.g. "
                        "1,1,1,1,1,1,3,1,1,1: probabilities are corrected from the training split's (uniform) "
                        "frequencies before any rule")
    return p


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the predictions and print them; returns the printed records."""
    if not 1 <= args.n <= 10_000:
        raise UserError(f"--n must be in 1..10000 (the test split's size), got {args.n}")
    abstain_cost = None if args.abstain_cost is None else check_abstain_cost(args.abstain_cost)
    if args.reject_below is not None:  # Chow's rule by its threshold: --abstain-cost 1-TAU under 0/1 costs
        if not 0 <= args.reject_below <= 1:
            raise UserError(f"--reject-below must be in [0, 1], got {args.reject_below}")
        if args.cost_matrix or abstain_cost is not None:
            raise UserError("--reject-below TAU is Chow's rule for 0/1 costs (the same as --abstain-cost 1-TAU); "
                            "pass only one of them, and with --cost-matrix use --abstain-cost")
        abstain_cost = 1.0 - args.reject_below
    prior = parse_prior(args.prior) if args.prior is not None else None
    cost = load_cost_matrix(args.cost_matrix) if args.cost_matrix else None
    # "last": the newest run's last.ckpt, as train.py's --ckpt_path last
    ckpt = newest_checkpoint(args.root_dir) if args.ckpt_path in (None, "last") else Path(args.ckpt_path)
    model, stats = load_checkpoint(ckpt)  # refuses anything but a regular, safely loadable checkpoint file
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; name the PNG file to write")
    names = class_names(args.labels)
    if args.images:
        X = torch.stack([load_image(p, args.invert) for p in args.images])  # (n, 28, 28)
        y = None
    else:
        find_raw_files(args.data_dir)
        images, labels = load_split(args.data_dir, "test")  # only the test split: no need to parse the 60k
        X, y = images[: args.n].float().div(255), labels[: args.n]  # (n, 28, 28) in [0, 1], as the data module
    with torch.no_grad():
        probs = model(standardize(X, stats))  # (n, 10)
    if not torch.isfinite(probs).all():  # finite but huge weights overflow: never print nan (and invalid JSON)
        raise UserError(f"checkpoint {ckpt} gives non-finite probabilities (its weights are too large: training "
                        f"diverged); pass --ckpt_path with an earlier checkpoint")
    if prior is not None:
        probs = shift_prior(probs, prior)  # the deployment's class frequencies; the training split's are uniform
    preds = decide(probs, cost, abstain_cost)
    name = lambda k: "(abstain)" if k == ABSTAIN else names[k]  # noqa: E731
    records = []
    for i in range(len(X)):
        top = probs[i].topk(3)
        rec = {"image": args.images[i] if args.images else i, "predicted": name(int(preds[i])),
               "probability": round(float(probs[i].max()), 4),
               "top3": [{"class": names[int(k)], "probability": round(float(p), 4)} for p, k in zip(*top)]}
        if y is not None:
            rec["true"] = names[int(y[i])]
        records.append(rec)
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=1, allow_nan=False))
    elif y is not None:
        print(f"{'#':>3}  {'true':<12} {'predicted':<12} {'p':>6}")
        for r in records:
            mark = "" if r["true"] == r["predicted"] or r["predicted"] == "(abstain)" else "  <- wrong"
            print(f"{r['image']:>3}  {r['true']:<12} {r['predicted']:<12} {r['probability']:6.3f}{mark}")
        answered = [r for r in records if r["predicted"] != "(abstain)"]  # an abstention is handed to a person
        acc = sum(r["true"] == r["predicted"] for r in answered) / len(answered) if answered else float("nan")
        which = f"these {len(records)}" if len(answered) == len(records) else \
            f"the {len(answered)} answered ({len(records) - len(answered)} of {len(records)} abstained)"
        print(f"accuracy on {which}: {acc:.3f}")
    else:
        for r in records:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top3"]))
    if y is not None:
        from softmax_lightning import figures

        out = Path(args.out) if args.out else ckpt.resolve().parent.parent / "predict" / "predictions.png"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(out, e) from None
        fig = figures.plot_predictions(X, y, preds.clamp_min(0), args.labels, probs.max(1).values)
        figures.save_png(fig, out)
        if not args.json:
            print(f"wrote {out}")
    return records


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``scripts/predict.py``; exit code 2 with one ``error:`` line on bad input."""
    args = _parser().parse_args(argv)
    try:
        predict(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0
