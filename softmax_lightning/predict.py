"""``scripts/predict.py``: classify Fashion-MNIST test images or your own image files with a trained checkpoint.

    python scripts/predict.py                         # first 16 test images, newest lightning_logs/*/last.ckpt
    python scripts/predict.py --n 8 --labels zh       # the chapter's Chinese class names
    python scripts/predict.py shoe.jpg shirt.png --invert   # your photos (dark object on light background)
    python scripts/predict.py --json                  # machine-readable output

Bad input (no checkpoint, missing or unreadable image, corrupt or foreign checkpoint) ends with one
``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from softmax_lightning.cli import find_last_checkpoint
from softmax_lightning.data import FashionMNISTDataModule, class_names
from softmax_lightning.errors import UserError
from softmax_lightning.model import SoftmaxRegression


def load_checkpoint(path: str | Path) -> tuple[SoftmaxRegression, tuple[float, float] | None]:
    """The trained model and the input standardisation it was trained with (``None``: raw [0, 1] pixels)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train one with `python scripts/train.py` or pass --ckpt PATH")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip failure means the file is damaged
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}); re-run training "
                        f"or pick another --ckpt") from None
    state, hparams = (ckpt.get("state_dict"), ckpt.get("hyper_parameters")) if isinstance(ckpt, dict) else (None, None)
    if not isinstance(state, dict) or "W" not in state or "b" not in state or not isinstance(hparams, dict):
        raise UserError(f"checkpoint {path} is not a SoftmaxRegression checkpoint (no W and b); pass a last.ckpt "
                        f"written by scripts/train.py")
    W = state["W"]
    if W.ndim != 2 or W.shape[0] != 28 * 28 or W.shape[1] != len(class_names()):
        raise UserError(f"checkpoint {path} holds a {tuple(W.shape)} W; this tool needs 784 inputs (28x28 images) "
                        f"and 10 Fashion-MNIST classes")
    known = inspect.signature(SoftmaxRegression).parameters  # LightningCLI adds keys such as _instantiator
    try:
        model = SoftmaxRegression(**{k: v for k, v in hparams.items() if k in known})
        model.load_state_dict(state)
    except (TypeError, RuntimeError, UserError) as e:
        raise UserError(f"checkpoint {path} does not fit SoftmaxRegression ({' '.join(str(e).split())[:200]})") \
            from None
    model.eval()
    stats = (ckpt.get("FashionMNISTDataModule") or {}).get("input_stats")
    return model, (tuple(stats) if stats else None)


def load_image(path: str | Path, invert: bool = False) -> Tensor:
    """Any PNG/JPEG -> grayscale, padded to a square, resized to 28x28, scaled to [0, 1]: shape ``(28, 28)``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} not found; check the path")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable image ({' '.join(str(e).split())[:120]}); pass a PNG or JPEG "
                        f"file") from None
    if invert:
        im = ImageOps.invert(im)
    px = np.asarray(im)
    border = int(np.median(np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])))  # the photo's background
    side = max(im.size)
    square = Image.new("L", (side, side), border)
    square.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
    small = square.resize((28, 28), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255)  # (28, 28)


def standardize(X: Tensor, stats: tuple[float, float] | None) -> Tensor:
    """Apply the training split's (mean, std), as the data module did during training."""
    return X if stats is None else (X - stats[0]) / stats[1]


def bayes_decisions(probs: Tensor, cost: Tensor) -> Tensor:
    """Minimum-expected-cost classes: ``argmin_k sum_j cost[j, k] * p_j`` (``cost[j, k]``: true j, predicted k)."""
    return (probs @ cost).argmin(1)  # (n, classes) @ (classes, classes) -> (n, classes) expected costs


def load_cost_matrix(path: str | Path, n: int = 10) -> Tensor:
    """A ``n x n`` cost matrix (rows: true class, columns: predicted) from a JSON or whitespace/CSV text file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cost matrix {path}: {e.strerror}; pass a readable file") from None
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else \
            [[float(v) for v in line.replace(",", " ").split()] for line in text.splitlines() if line.strip()]
        cost = torch.tensor(rows, dtype=torch.float32)
    except (ValueError, TypeError) as e:
        raise UserError(f"cost matrix {path} is not a table of numbers ({e}); write {n} rows of {n} numbers") \
            from None
    if cost.shape != (n, n) or not torch.isfinite(cost).all():
        raise UserError(f"cost matrix {path} has shape {tuple(cost.shape)}; it needs {n} rows of {n} finite numbers")
    return cost


def decide(probs: Tensor, cost: Tensor | None, reject_below: float | None) -> Tensor:
    """Predicted classes: argmax, or Bayes decisions under ``cost``; -1 where the top probability < ``reject_below``."""
    preds = probs.argmax(1) if cost is None else bayes_decisions(probs, cost)
    if reject_below is not None:
        preds = torch.where(probs.max(1).values < reject_below, torch.full_like(preds, -1), preds)
    return preds


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Classify Fashion-MNIST test images or image files with a checkpoint.")
    p.add_argument("images", nargs="*", help="PNG/JPEG files to classify (default: the first --n test images)")
    p.add_argument("--ckpt", help="checkpoint (default: newest last.ckpt under --log_dir)")
    p.add_argument("--log_dir", default="lightning_logs")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--n", type=int, default=16, help="how many test images (default 16, as the chapter)")
    p.add_argument("--invert", action="store_true", help="photos of dark objects on light backgrounds")
    p.add_argument("--labels", choices=("en", "zh"), default="en")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", help="prediction grid PNG (default: <run folder>/predict/predictions.png)")
    p.add_argument("--cost-matrix", help="10x10 costs (rows true, columns predicted): choose min expected cost")
    p.add_argument("--reject-below", type=float, help="abstain (predict -1) when the top probability is below this")
    return p


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the predictions and print them; returns the printed records."""
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if args.reject_below is not None and not 0 <= args.reject_below <= 1:
        raise UserError(f"--reject-below must be in [0, 1], got {args.reject_below}")
    ckpt = Path(args.ckpt) if args.ckpt else find_last_checkpoint(args.log_dir)
    model, stats = load_checkpoint(ckpt)
    names = class_names(args.labels)
    cost = load_cost_matrix(args.cost_matrix) if args.cost_matrix else None
    if args.images:
        X = torch.stack([load_image(p, args.invert) for p in args.images])  # (n, 28, 28)
        y = None
    else:
        dm = FashionMNISTDataModule(data_dir=args.data_dir)
        dm.prepare_data()
        dm.setup("test")
        X, y = dm.splits["test"][0][: args.n].reshape(-1, 28, 28), dm.splits["test"][1][: args.n]  # raw [0, 1]
    with torch.no_grad():
        probs = model(standardize(X, stats))  # (n, 10)
    preds = decide(probs, cost, args.reject_below)
    name = lambda k: "(abstain)" if k < 0 else names[k]  # noqa: E731
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
        print(json.dumps(records, ensure_ascii=False, indent=1))
    elif y is not None:
        print(f"{'#':>3}  {'true':<12} {'predicted':<12} {'p':>6}")
        for r in records:
            mark = "" if r["true"] == r["predicted"] else "  <- wrong"
            print(f"{r['image']:>3}  {r['true']:<12} {r['predicted']:<12} {r['probability']:6.3f}{mark}")
        print(f"accuracy on these {len(records)}: {sum(r['true'] == r['predicted'] for r in records) / len(records):.3f}")
    else:
        for r in records:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top3"]))
    if y is not None:
        from softmax_lightning import figures

        out = Path(args.out) if args.out else ckpt.resolve().parent.parent / "predict" / "predictions.png"
        out.parent.mkdir(parents=True, exist_ok=True)
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
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0
