"""Why the tuned recipe's learning rate fits its inputs: curvature and step size, measured (see docs/tuned.md).

    python -m softmax_lightning.curvature            # the training split of configs/tuned.yaml (55,000 images)

For softmax regression the loss's Hessian with respect to ``(W, b)`` is ``E[x x^T (x) (diag p - p p^T)]`` with
``x`` the input plus a constant 1 for the bias. At the start (``W`` near 0, so ``p`` is uniform, ``1/K``), it is
``E[x x^T] (x) (I - 11^T/K) / K``: its largest eigenvalue is ``lambda_max(E[x x^T]) / K``. On a quadratic, plain
gradient descent with step ``lr`` is stable only if ``lr * lambda < 2``; momentum changes that limit.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import Tensor

from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError, one_line


def second_moment(X: Tensor, bias: bool = True) -> Tensor:
    """``E[x x^T]`` over the rows of ``X`` (``(n, d)``), returned in float64 (summed in ``X``'s dtype); with
    ``bias`` each ``x`` gets a trailing 1."""
    if bias:
        X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)  # (n, d + 1)
    return (X.T @ X).double() / len(X)  # (d, d)


def top_eigen(M: Tensor) -> tuple[float, Tensor]:
    """The largest eigenvalue of the symmetric matrix ``M`` and its unit eigenvector."""
    values, vectors = torch.linalg.eigh(M)  # ascending
    return float(values[-1]), vectors[:, -1]


def init_hessian_top(second_moment_top: float, classes: int = 10) -> float:
    """The loss Hessian's largest eigenvalue at ``W = 0`` (uniform ``p``): ``lambda_max(E[x x^T]) / K``."""
    return second_moment_top / classes


def max_stable_step(momentum: float = 0.0, nesterov: bool = False) -> float:
    """The largest ``lr * lambda`` for which SGD (``ChapterSGD``'s update) converges on ``f = lambda theta^2 / 2``.

    Plain: 2. Heavy ball: ``2 (1 + beta)``. Nesterov: ``2 (1 + beta) / (1 + 2 beta)``. Found by bisection on the
    spectral radius of the update's 2x2 linear map, so the formulas are checked, not assumed.

    Example:
        >>> round(max_stable_step(), 3), round(max_stable_step(0.9), 3), round(max_stable_step(0.9, True), 3)
        (2.0, 3.8, 1.357)
    """

    def radius(h: float) -> float:  # state (theta, buf); gradient g = theta (lambda = 1), step h
        b = momentum
        if nesterov:  # buf' = b buf + g;  theta' = theta - h (g + b buf')
            A = torch.tensor([[1 - h * (1 + b), -h * b * b], [1.0, b]], dtype=torch.float64)
        else:  # buf' = b buf + g;  theta' = theta - h buf'
            A = torch.tensor([[1 - h, -h * b], [1.0, b]], dtype=torch.float64)
        return float(torch.linalg.eigvals(A).abs().max())

    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if radius(mid) < 1 else (lo, mid)
    return lo


RANKS = (1, 2, 10, 100)  # eigenvalues reported by rank


def input_curvature(data_dir: str = "data", val_size: int = 5000, seed: int = 0) -> dict:
    """``lambda_max(E[x x^T])`` of the training split, raw ([0, 1] pixels) and standardised with one global mean and
    std (as ``--data.standardize true``), and how much the top direction is the mean image."""
    out = {}
    for standardize in (False, True):
        dm = FashionMNISTDataModule(data_dir=data_dir, val_size=val_size, seed=seed, standardize=standardize)
        dm.setup("fit")
        X = dm.train_set.X.flatten(1)  # (n, 784)
        top, v = top_eigen(second_moment(X, bias=False))
        spectrum = torch.linalg.eigvalsh(second_moment(X, bias=True)).flip(0)  # descending, with the bias's 1
        mean = X.double().mean(0)
        out["standardized" if standardize else "raw"] = {
            "n": len(X),
            "stats": dm.input_stats,
            "top": top,
            "top_with_bias": float(spectrum[0]),
            "ranked": {r: float(spectrum[r - 1]) for r in RANKS},
            "mean_norm2": float(mean @ mean),  # ||E[x]||^2: the mean image's share of the top eigenvalue
            "cos_top_mean": float((v @ mean).abs() / mean.norm()),
            "pixel_means": (float(mean.min()), float(mean.max())),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data.data_dir", "--data_dir", dest="data_dir", default="data")
    p.add_argument("--data.val_size", "--val_size", dest="val_size", type=int, default=5000)
    args = p.parse_args(argv)
    try:
        res = input_curvature(args.data_dir, args.val_size)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    limits = {
        "plain SGD": max_stable_step(),
        "heavy ball 0.9": max_stable_step(0.9),
        "Nesterov 0.9": max_stable_step(0.9, True),
    }
    print(f"training split: {res['raw']['n']} images (--data.val_size {args.val_size}, seed 0); x = the 784 pixels")
    print(f"{'inputs':<13} {'lambda_max E[xx^T]':>19} {'||E[x]||^2':>11} {'cos(top, E[x])':>15} {'pixel means':>15}")
    for name, r in res.items():
        lo, hi = r["pixel_means"]
        print(
            f"{name:<13} {r['top']:>19.1f} {r['mean_norm2']:>11.1f} {r['cos_top_mean']:>15.3f} "
            f"{f'{lo:.2f} to {hi:.2f}':>15}"
        )
    print("\nwith the bias's constant 1 appended to x: eigenvalues of E[xx^T] by rank, and what they mean for SGD")
    print(
        f"{'inputs':<13} " + " ".join(f"{'lambda_' + str(k):>10}" for k in RANKS) + f" {'lambda_1/lambda_100':>20} "
        f"{'Hessian at init':>16} {'plain SGD: lr <':>16} {'Nesterov 0.9: lr <':>19}"
    )
    for name, r in res.items():
        h = init_hessian_top(r["top_with_bias"])
        print(
            f"{name:<13} "
            + " ".join(f"{r['ranked'][k]:>10.3f}" for k in RANKS)
            + f" {r['ranked'][1] / r['ranked'][100]:>20.0f} {h:>16.2f} {limits['plain SGD'] / h:>16.3f} "
            f"{limits['Nesterov 0.9'] / h:>19.3f}"
        )
    print("stability limits on a quadratic, lr * lambda < " + ", ".join(f"{k}: {v:.3f}" for k, v in limits.items()))
    print("momentum's step along flat directions: lr / (1 - beta), e.g. 0.01 / (1 - 0.9) = 0.1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
