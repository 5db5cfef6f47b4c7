"""The chapter's five exercises, answered by running code.

    python -m softmax_lightning.exercises all        # or 1, 2, 3, 4, 5 (several allowed: 1 2)

1. overflow in the naive softmax; 2. the log's domain in the naive cross-entropy; 3. the fix, in training;
4. is argmax always best? (Bayes decisions under a cost matrix, a reject option, calibration);
5. a huge vocabulary (full softmax cost vs sampled softmax).
Exercises 3 and 4 train on the real Fashion-MNIST files (``--data_dir``, default ``data``).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from softmax_lightning import functional as F
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError, one_line
from softmax_lightning.model import NonFiniteLossError, SoftmaxRegression
from softmax_lightning.predict import bayes_decisions
from softmax_lightning.profiling import PeakRSS

SHIRT, TSHIRT, PULLOVER, COAT = 6, 0, 2, 4


def _title(n: int, text: str) -> None:
    print(f"\n=== Exercise {n}: {text} ===")


# ---------------------------------------------------------------- 1. overflow in softmax
def overflow_table() -> list[dict]:
    """Naive vs stable softmax on rows ``[m, m-1, m-2]`` for several maxima ``m``, in float32 and float64."""
    rows = []
    for m in (10.0, 50.0, 88.0, 89.0, 100.0, 1000.0, -110.0, -750.0):
        for dtype in (torch.float32, torch.float64):
            X = torch.tensor([[m, m - 1, m - 2]], dtype=dtype)
            naive, stable = F.softmax_naive(X)[0], F.softmax(X)[0]
            rows.append({"max": m, "dtype": str(dtype).replace("torch.", ""), "naive": naive.tolist(),
                         "naive_sum": float(naive.sum()), "stable": stable.tolist(), "stable_sum": float(stable.sum())})
    return rows


def exercise1() -> None:
    _title(1, "what can go wrong with softmax(X) = exp(X) / sum(exp(X))?")
    for dtype in (torch.float32, torch.float64):
        print(f"exp(50) in {str(dtype).replace('torch.', '')}: {torch.exp(torch.tensor(50.0, dtype=dtype)).item():.6e}"
              f"   largest finite: {torch.finfo(dtype).max:.3e}   exp overflows above {math.log(torch.finfo(dtype).max):.2f}")
    print(f"\n{'row max':>8} {'dtype':>8}  {'naive softmax':<30} {'sum':>6}   {'stable softmax':<26} {'sum':>6}")
    fmt = lambda v: "[" + ", ".join(f"{x:.3g}" for x in v) + "]"  # noqa: E731
    for r in overflow_table():
        print(f"{r['max']:>8g} {r['dtype']:>8}  {fmt(r['naive']):<30} {r['naive_sum']:>6.3g}   "
              f"{fmt(r['stable']):<26} {r['stable_sum']:>6.3g}")
    print("Rows are [m, m-1, m-2]. exp overflows to inf above ~88.7 (float32) / ~709.8 (float64): inf/inf = nan. "
          "Far below zero every exp underflows to 0: 0/0 = nan. Subtracting the row max first (same value, "
          "mathematically) keeps every exp in (0, 1].")


# ---------------------------------------------------------------- 2. the log's domain
def log_domain_table() -> list[dict]:
    """Cross-entropy where the true class's probability underflows: naive on probabilities vs log-sum-exp."""
    rows = []
    for gap in (10.0, 50.0, 87.0, 104.0, 200.0, 1000.0):
        logits = torch.tensor([[0.0, -gap]])  # the true class (1) trails the other by `gap`
        y = torch.tensor([1])
        p = F.softmax(logits)
        rows.append({"gap": gap, "p_true": float(p[0, 1]), "naive": float(F.cross_entropy_naive(p, y)[0]),
                     "stable": float(F.cross_entropy(logits, y)[0]),
                     "torch": float(torch.nn.functional.cross_entropy(logits, y))})
    return rows


def exercise2() -> None:
    _title(2, "what can go wrong with cross_entropy = -log(y_hat[range(n), y])?")
    print(f"{'logit gap':>9} {'p(true class)':>14} {'-log(p) naive':>14} {'log-sum-exp':>12} {'F.cross_entropy':>16}")
    for r in log_domain_table():
        print(f"{r['gap']:>9g} {r['p_true']:>14.4g} {r['naive']:>14.6g} {r['stable']:>12.6g} {r['torch']:>16.6g}")
    print("log is defined on (0, inf): once the true class's probability underflows to 0 (float32: gap > ~103), "
          "-log(0) = inf and its gradient is nan. Computing the loss from logits as logsumexp(z) - z_y never forms "
          "the tiny probability, stays finite, and equals torch's F.cross_entropy.")


# ---------------------------------------------------------------- 3. the fix, in training
def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kw)


def naive_vs_stable_run(data_dir: str, lr: float = 100.0, epochs: int = 2, seed: int = 0) -> dict[str, dict]:
    """Train the same seed with the naive and the stable path at a large lr; report how each ended."""
    _quiet()
    out = {}
    for kind in ("naive", "stable"):
        L.seed_everything(seed, verbose=False)
        model = SoftmaxRegression(lr=lr, softmax=kind)
        try:
            trainer = _trainer(max_epochs=epochs)
            trainer.fit(model, datamodule=FashionMNISTDataModule(data_dir=data_dir, seed=seed))
            logged = trainer.callback_metrics  # the last epoch's logged metrics
            out[kind] = {"status": "finished", "train_loss": float(logged["train_loss"]),
                         "val_acc": float(logged["val_acc"])}
        except NonFiniteLossError as e:
            out[kind] = {"status": "stopped", "message": str(e)}
    return out


def exercise3(data_dir: str) -> None:
    _title(3, "the fix, in training (same seed, lr = 100, real data)")
    for kind, r in naive_vs_stable_run(data_dir).items():
        if r["status"] == "stopped":
            print(f"softmax={kind}: stopped by the non-finite guard -> {r['message']}")
        else:
            print(f"softmax={kind}: finished 2 epochs, train loss {r['train_loss']:.3f}, val acc {r['val_acc']:.4f}")
    print("The fix for exercises 1-2: subtract the row max inside softmax, and compute cross-entropy from logits "
          "with log-sum-exp (SoftmaxRegression(softmax='stable'), the default). The naive path overflows on its "
          "first large step; the guard stops training with the epoch and step instead of continuing on nan.")


# ---------------------------------------------------------------- 4. is argmax always best?
def cost_matrix(expensive: float = 10.0) -> Tensor:
    """0 on the diagonal, 1 elsewhere, ``expensive`` when a true Shirt is called a T-shirt, Pullover or Coat."""
    C = 1 - torch.eye(10)
    C[SHIRT, [TSHIRT, PULLOVER, COAT]] = expensive  # rows: true class, columns: predicted
    return C


def expected_calibration_error(probs: Tensor, y: Tensor, bins: int = 15) -> tuple[float, list[tuple]]:
    """ECE with equal-width confidence bins; also the reliability diagram's (confidence, accuracy, count) per bin."""
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece, diagram = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            c, a, n = float(conf[mask].mean()), float(correct[mask].mean()), int(mask.sum())
            ece += n / len(y) * abs(a - c)
            diagram.append((c, a, n))
    return ece, diagram


def decision_analysis(probs: Tensor, y: Tensor, C: Tensor) -> dict:
    """Argmax vs Bayes decisions under ``C``; the reject-option curve; calibration."""
    res = {}
    for name, pred in (("argmax", probs.argmax(1)), ("bayes", bayes_decisions(probs, C))):
        res[name] = {"accuracy": float((pred == y).float().mean()),
                     "realized_cost": float(C[y, pred].mean()),  # on the true labels
                     "expected_cost": float((probs @ C).gather(1, pred[:, None]).mean()),  # under the model
                     "shirts_missed": int(((y == SHIRT) & (pred != SHIRT)).sum())}
    conf, pred = probs.max(1)
    curve = []
    for tau in [i / 100 for i in range(0, 100, 3)] + [0.99]:
        keep = conf >= tau
        acc = float((pred[keep] == y[keep]).float().mean()) if keep.any() else float("nan")
        curve.append((tau, float(keep.float().mean()), acc))
    res["reject_curve"] = curve
    res["ece"], res["reliability"] = expected_calibration_error(probs, y)
    return res


def plot_decisions(res: dict, path: Path) -> None:
    """``risk_coverage.png``: accuracy vs coverage for the reject option, and the reliability diagram."""
    from matplotlib.figure import Figure

    from softmax_lightning.figures import save_png

    fig = Figure(figsize=(9.0, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    taus, cov, acc = zip(*res["reject_curve"])
    ax1.plot(cov, acc, "o-", ms=3)
    for t, c, a in res["reject_curve"][::6]:
        ax1.annotate(f"τ={t:.2f}", (c, a), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax1.set(xlabel="coverage (fraction not rejected)", ylabel="accuracy on accepted", title="reject option")
    ax1.grid(True)
    conf, accs, _ = zip(*res["reliability"])
    ax2.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax2.plot(conf, accs, "s-", label=f"model (ECE {res['ece']:.3f})")
    ax2.set(xlabel="confidence (max probability)", ylabel="accuracy", title="reliability diagram")
    ax2.legend(fontsize=8)
    ax2.grid(True)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    save_png(fig, path)


def exercise4(data_dir: str, out_dir: Path) -> dict:
    _title(4, "is the most probable class always the best answer? (the medical-diagnosis question)")
    _quiet()
    L.seed_everything(0, verbose=False)
    model, dm = SoftmaxRegression(), FashionMNISTDataModule(data_dir=data_dir)
    _trainer(max_epochs=10).fit(model, datamodule=dm)
    X, y = dm.test_set.X, dm.test_set.y
    with torch.no_grad():
        probs = model(X)
    C = cost_matrix()
    res = decision_analysis(probs, y, C)
    print("Trained the chapter's recipe (10 epochs); decisions on the 10,000 test images.")
    print("Cost matrix: 1 per mistake, 10 when a true Shirt is called T-shirt/top, Pullover or Coat "
          "(think: a missed diagnosis).")
    print(f"{'rule':<8} {'accuracy':>9} {'mean cost (true labels)':>24} {'expected cost (model)':>22} "
          f"{'shirts missed':>14}")
    for name in ("argmax", "bayes"):
        r = res[name]
        print(f"{name:<8} {r['accuracy']:>9.4f} {r['realized_cost']:>24.4f} {r['expected_cost']:>22.4f} "
              f"{r['shirts_missed']:>14d}")
    print("\nReject option (abstain when the top probability < τ):")
    print(f"{'τ':>5} {'coverage':>9} {'accuracy':>9}")
    for tau, cov, acc in res["reject_curve"][::3]:
        print(f"{tau:>5.2f} {cov:>9.4f} {acc:>9.4f}")
    print(f"\nCalibration: expected calibration error (15 bins) = {res['ece']:.4f}")
    for c, a, n in res["reliability"]:
        print(f"  confidence {c:.2f}: accuracy {a:.2f} ({n} images)")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_decisions(res, out_dir / "risk_coverage.png")
    print(f"wrote {out_dir / 'risk_coverage.png'}")
    print("No: argmax minimises the number of mistakes only when every mistake costs the same. With unequal costs, "
          "choose argmin_k sum_j C[j,k] p_j (Bayes decision): it trades a little accuracy for a lower cost. Where "
          "no class is likely enough, abstaining (and asking a doctor) buys accuracy on the rest. Both rely on "
          "calibrated probabilities, so we measure calibration too. Try: scripts/predict.py --cost-matrix FILE "
          "--reject-below 0.6")
    return res


# ---------------------------------------------------------------- 5. a huge vocabulary
def full_step(X: Tensor, y: Tensor, W: Tensor, b: Tensor, lr: float = 0.1) -> None:
    """One hand-written SGD step of full softmax regression over all classes."""
    F.cross_entropy(X @ W + b, y).sum().backward()  # (batch, d) @ (d, K) -> (batch, K)
    with torch.no_grad():
        for p in (W, b):
            p.sub_(lr * p.grad / len(y))
            p.grad = None


def sampled_step(X: Tensor, y: Tensor, W: Tensor, b: Tensor, n_sampled: int, gen: torch.Generator,
                 lr: float = 0.1) -> None:
    """One step of sampled softmax: the batch's true classes plus ``n_sampled`` uniform negatives.

    Only the candidate columns of W are touched: (batch, d) @ (d, |candidates|). With a uniform proposal the
    log-probability correction is the same for every candidate, so it cancels inside the softmax.
    """
    K = W.shape[1]
    cand, y_local = torch.unique(torch.cat([y, torch.randint(0, K, (n_sampled,), generator=gen)]),
                                 return_inverse=True)
    y_local = y_local[: len(y)]
    Wc, bc = W[:, cand].detach().requires_grad_(), b[cand].detach().requires_grad_()
    F.cross_entropy(X @ Wc + bc, y_local).sum().backward()
    with torch.no_grad():
        W[:, cand] -= lr * Wc.grad / len(y)
        b[cand] -= lr * bc.grad / len(y)


def time_steps(K: int, d: int = 784, batch: int = 256, n_sampled: int | None = None, reps: int = 3) -> dict:
    """Median seconds and peak memory rise of one training step with ``K`` classes."""
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(batch, d, generator=gen), torch.randint(0, K, (batch,), generator=gen)
    with PeakRSS() as mem:
        W = torch.zeros(d, K, requires_grad=True)
        b = torch.zeros(K, requires_grad=True)
        times = []
        for _ in range(reps + 1):  # the first one warms up
            t = time.perf_counter()
            full_step(X, y, W, b) if n_sampled is None else sampled_step(X, y, W, b, n_sampled, gen)
            times.append(time.perf_counter() - t)
    return {"K": K, "seconds": statistics.median(times[1:]), "peak_mb": mem.delta_mb,
            "param_mb": W.numel() * 4 / 2**20}


def synthetic_task(K: int, d: int = 64, per_class: int = 6, noise: float = 1.5, seed: int = 0) -> tuple[Tensor, ...]:
    """Gaussian clusters around random class prototypes: ``per_class - 1`` training images and 1 test image per class."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(K, d, generator=g)
    y = torch.arange(K).repeat_interleave(per_class)
    X = proto[y] + noise * torch.randn(len(y), d, generator=g)
    test = torch.arange(len(y)) % per_class == 0
    return X[~test], y[~test], X[test], y[test]


def train_compare(K: int, epochs: int = 3, d: int = 64, n_sampled: int = 1024, lr: float = 1.0) -> dict:
    """Full vs sampled softmax on the synthetic task: seconds per epoch and test accuracy (scored over all K)."""
    Xtr, ytr, Xte, yte = synthetic_task(K, d)
    out = {}
    for kind in ("full", "sampled"):
        gen = torch.Generator().manual_seed(1)
        W, b = torch.zeros(d, K, requires_grad=True), torch.zeros(K, requires_grad=True)
        t = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(ytr), generator=gen)
            for i in range(0, len(perm), 256):
                idx = perm[i : i + 256]
                if kind == "full":
                    full_step(Xtr[idx], ytr[idx], W, b, lr)
                else:
                    sampled_step(Xtr[idx], ytr[idx], W, b, n_sampled, gen, lr)
        seconds = (time.perf_counter() - t) / epochs
        with torch.no_grad():
            acc = float(((Xte @ W + b).argmax(1) == yte).float().mean())
        out[kind] = {"seconds_per_epoch": seconds, "test_acc": acc}
    return out


def exercise5(max_classes: int = 100_000) -> dict:
    _title(5, "predicting the next word: what does a huge vocabulary cost?")
    sizes = [k for k in (10, 100, 1_000, 10_000, 100_000) if k <= max_classes]
    print("One training step, batch 256, 784 synthetic features (median of 3):")
    print(f"{'classes':>8} {'full s/step':>12} {'full peak MB':>13} {'W MB':>8} {'sampled s/step':>15}")
    rows = []
    for K in sizes:
        full = time_steps(K)
        sampled = time_steps(K, n_sampled=1024) if K > 1024 else None
        rows.append({"full": full, "sampled": sampled})
        s = f"{sampled['seconds']:>15.4f}" if sampled else f"{'-':>15}"
        print(f"{K:>8d} {full['seconds']:>12.4f} {full['peak_mb']:>13.1f} {full['param_mb']:>8.1f} {s}")
    K = min(10_000, max_classes)
    cmp = train_compare(K)
    print(f"\nSynthetic task with {K} classes (64 features, 5 noisy training images per class, 3 epochs, lr 1.0; "
          f"sampled softmax: batch's classes + 1024 uniform negatives):")
    print(f"{'':>8} {'s/epoch':>8} {'test acc':>9}")
    for kind, r in cmp.items():
        print(f"{kind:>8} {r['seconds_per_epoch']:>8.3f} {r['test_acc']:>9.4f}")
    print("Every step computes a (batch x K) score matrix and touches all d x K weights, so time and memory grow "
          "linearly in K (x10 classes -> ~x10 cost once K dominates). Sampled softmax scores only the batch's true "
          "classes and a few sampled negatives, so its step cost barely depends on K; it is a training-time "
          "approximation (prediction still scores every class). Hierarchical softmax is the other standard fix.")
    return {"steps": rows, "compare": cmp}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("which", nargs="*", default=["all"], help="1-5 or all")
    p.add_argument("--data.data_dir", "--data_dir", dest="data_dir", default="data",
                   help="folder holding FashionMNIST/raw/ (as scripts/train.py's --data.data_dir)")
    p.add_argument("--out_dir", default="lightning_logs/exercises", help="where risk_coverage.png goes")
    args = p.parse_args(argv)
    chosen = set(range(1, 6)) if "all" in args.which else set()
    for w in args.which:
        if w != "all":
            if w not in {"1", "2", "3", "4", "5"}:
                print(f"error: unknown exercise {w!r}; choose 1-5 or all", file=sys.stderr)
                return 2
            chosen.add(int(w))
    torch.set_printoptions(precision=4)
    try:
        for n in sorted(chosen):
            if n == 1:
                exercise1()
            elif n == 2:
                exercise2()
            elif n == 3:
                exercise3(args.data_dir)
            elif n == 4:
                exercise4(args.data_dir, Path(args.out_dir))
            else:
                exercise5()
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
