"""The chapter's five exercises, answered by running code.

    python -m softmax_lightning.exercises all        # or 1, 2, 3, 4, 5 (several allowed: 1 2)

1. overflow in the naive softmax; 2. the log's domain in the naive cross-entropy (the gradient breaks first);
3. the fix, in training; 4. is argmax always best? (the Bayes rule under costs, abstaining, Chow's rule, a change of
prior, calibration of the probabilities the rules use); 5. a huge vocabulary (what grows with K, sampled softmax,
the log-Q correction on Zipf-distributed classes).
Exercises 3 and 4 train on the real Fashion-MNIST files (``--data.data_dir``, default ``data``). Options are checked
before anything runs. Printed numbers of exercises 3 and 5 depend on the thread count (each prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from softmax_lightning import decisions as D
from softmax_lightning import functional
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError, one_line
from softmax_lightning.fashion_mnist import find_raw_files, load_split
from softmax_lightning.io import exit_quietly_on_broken_pipe
from softmax_lightning.model import NonFiniteLossError, SoftmaxRegression
from softmax_lightning.profiling import PeakRSS

SHIRT = 6  # Fashion-MNIST's class index of "Shirt"


def _title(n: int, text: str) -> None:
    print(f"\n=== Exercise {n}: {text} ===")


# ---------------------------------------------------------------- 1. overflow in softmax
def overflow_table() -> list[dict]:
    """Naive vs stable softmax on rows ``[m, m-1, m-2]`` for several maxima ``m``, in float32 and float64."""
    rows = []
    for m in (10.0, 50.0, 88.0, 89.0, 100.0, 1000.0, -110.0, -750.0):
        for dtype in (torch.float32, torch.float64):
            X = torch.tensor([[m, m - 1, m - 2]], dtype=dtype)
            naive, stable = functional.softmax_naive(X)[0], functional.softmax(X)[0]
            rows.append(
                {
                    "max": m,
                    "dtype": str(dtype).replace("torch.", ""),
                    "naive": naive.tolist(),
                    "naive_sum": float(naive.sum()),
                    "stable": stable.tolist(),
                    "stable_sum": float(stable.sum()),
                }
            )
    return rows


def exercise1() -> None:
    _title(1, "what can go wrong with softmax(X) = exp(X) / sum(exp(X))?")
    for dtype in (torch.float32, torch.float64):
        big = torch.finfo(dtype).max
        print(
            f"exp(50) in {str(dtype).replace('torch.', '')}: {torch.exp(torch.tensor(50.0, dtype=dtype)).item():.6e}"
            f"   largest finite: {big:.3e}   exp overflows above {math.log(big):.2f}"
        )
    print(f"\n{'row max':>8} {'dtype':>8}  {'naive softmax':<30} {'sum':>6}   {'stable softmax':<26} {'sum':>6}")
    fmt = lambda v: "[" + ", ".join(f"{x:.3g}" for x in v) + "]"  # noqa: E731
    for r in overflow_table():
        print(
            f"{r['max']:>8g} {r['dtype']:>8}  {fmt(r['naive']):<30} {r['naive_sum']:>6.3g}   "
            f"{fmt(r['stable']):<26} {r['stable_sum']:>6.3g}"
        )
    print(
        "Rows are [m, m-1, m-2]. exp overflows to inf above ~88.7 (float32) / ~709.8 (float64): inf/inf = nan. "
        "Far below zero every exp underflows to 0: 0/0 = nan. Subtracting the row max first (same value, "
        "mathematically) keeps every exp in [0, 1] with the max's exp = 1, so the sum is >= 1: nothing overflows "
        "and nothing divides by zero. An entry far below its row's max still underflows to 0 (exercise 2)."
    )


# ---------------------------------------------------------------- 2. the log's domain
GRAD_PATHS = {  # logits -> loss, three ways
    "chapter": lambda z, y: functional.cross_entropy_naive(functional.softmax_naive(z), y),  # the chapter's two cells
    "stable softmax, then -log": lambda z, y: functional.cross_entropy_naive(
        functional.softmax(z), y
    ),  # fixes exercise 1 only
    "log-sum-exp": functional.cross_entropy,  # never forms the probability
}


def loss_and_grad(logits: Tensor, y: Tensor, path: str) -> tuple[float, list[float]]:
    """One sample's loss by ``GRAD_PATHS[path]`` and its gradient with respect to the logits (autograd)."""
    z = logits.clone().requires_grad_()  # (1, classes)
    loss = GRAD_PATHS[path](z, y)  # (1,)
    loss.sum().backward()
    return float(loss.detach()[0]), z.grad[0].tolist()


def log_domain_table(
    gaps: tuple[float, ...] = (10.0, 50.0, 87.0, 88.0, 89.0, 95.0, 100.0, 103.0, 103.9, 104.0, 200.0, 1000.0),
) -> list[dict]:
    """Logits ``[0, -gap]`` in float32, true class 1: its probability, the loss and the gradient by each path.

    ``exact`` is the true loss, ``gap + log(1 + exp(-gap))``, in float64; the true gradient is ``[1 - p, p - 1]``.
    """
    rows = []
    for gap in gaps:
        logits, y = torch.tensor([[0.0, -gap]]), torch.tensor([1])  # the true class trails the other by `gap`
        row = {
            "gap": gap,
            "p_true": float(functional.softmax(logits)[0, 1]),
            "exact": gap + math.log1p(math.exp(-gap)),
            "torch": float(torch.nn.functional.cross_entropy(logits, y)),
        }
        for path in GRAD_PATHS:
            row[path] = dict(zip(("loss", "grad"), loss_and_grad(logits, y, path)))
        rows.append(row)
    return rows


def exercise2() -> None:
    _title(2, "what can go wrong with cross_entropy = -log(y_hat[range(n), y])?")
    f32 = torch.finfo(torch.float32)
    print(f"float32: smallest normal {f32.tiny:.3g}, smallest subnormal {2.0**-149:.3g}, 1/largest {1 / f32.max:.3g}")
    print(
        "Logits [0, -gap], the true class is the second; the exact loss is gap + log(1 + exp(-gap)) and the exact "
        "gradient [1 - p, p - 1]."
    )
    fmt = lambda g: "[" + ", ".join(f"{v:.3g}" for v in g) + "]"  # noqa: E731
    print(
        f"{'gap':>6} {'p(true)':>9} {'chapter loss':>13} {'its error':>10} {'log-sum-exp':>12}   "
        f"{'gradient: chapter':<18} {'stable softmax, -log':<21} {'log-sum-exp':<12}"
    )
    for r in log_domain_table():
        ch, st, lse = (r[k] for k in GRAD_PATHS)
        err = ch["loss"] - r["exact"]
        print(
            f"{r['gap']:>6g} {r['p_true']:>9.3g} {ch['loss']:>13.6g} {err:>10.3g} {lse['loss']:>12.6g}   "
            f"{fmt(ch['grad']):<18} {fmt(st['grad']):<21} {fmt(lse['grad'])}"
        )
    print(
        "The gradient breaks first. d(-log p)/dp = -1/p overflows once p < 1/largest (gap > ~88.7): from gap 89 the "
        "chapter's gradient is not finite while its loss is still right. Stable softmax followed by -log breaks the "
        "same way: fixing softmax alone does not fix training. The loss itself loses digits only when p is "
        "subnormal and tiny (off by 0.017 at gap 100; for gaps ~103 to ~104 p is the smallest subnormal and the "
        "loss is stuck at -log(1.4e-45) = 103.28) and is inf once p underflows to 0 (gap > ~103.97). "
        "Log-sum-exp, logsumexp(z) - z_y, never forms p: its loss and gradient stay right at every gap, and equal "
        "torch's F.cross_entropy."
    )


# ---------------------------------------------------------------- 3. the fix, in training
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's notices and every warning off while an exercise trains; both are as before afterwards."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def naive_vs_stable_run(data_dir: str, lr: float = 100.0, epochs: int = 2, seed: int = 0) -> dict[str, dict]:
    """Train the same seed with the naive and the stable path at a large lr; report how each ended."""
    out = {}
    for kind in ("naive", "stable"):
        L.seed_everything(seed, verbose=False)
        model = SoftmaxRegression(lr=lr, softmax=kind)
        try:
            trainer = _trainer(max_epochs=epochs)
            with _quiet():
                trainer.fit(model, datamodule=FashionMNISTDataModule(data_dir=data_dir, seed=seed))
            logged = trainer.callback_metrics  # the last epoch's logged metrics
            out[kind] = {
                "status": "finished",
                "train_loss": float(logged["train_loss"]),
                "val_acc": float(logged["val_acc"]),
            }
        except NonFiniteLossError as e:
            out[kind] = {"status": "stopped", "message": str(e)}
    return out


def exercise3(data_dir: str) -> None:
    _title(3, "the fix, in training (same seed, lr = 100, real data)")
    print(f"torch threads: {torch.get_num_threads()} (at lr 100 the exact numbers depend on the order of sums)")
    for kind, r in naive_vs_stable_run(data_dir).items():
        if r["status"] == "stopped":
            print(f"softmax={kind}: stopped by the non-finite guard -> {r['message']}")
        else:
            print(f"softmax={kind}: finished 2 epochs, train loss {r['train_loss']:.3f}, val acc {r['val_acc']:.4f}")
    print(
        "The fix for exercises 1-2: subtract the row max inside softmax, and compute cross-entropy from logits "
        "with log-sum-exp (SoftmaxRegression(softmax='stable'), the default). The naive path breaks on its "
        "first large step; the guard stops training with the epoch and step instead of continuing on nan."
    )


# ---------------------------------------------------------------- 4. is argmax always best?
SHIRT_MISS = 10.0  # the cost of calling a true Shirt anything else


def cost_matrix(miss: float = SHIRT_MISS) -> Tensor:
    """Costs ``C[true, predicted]``: a right answer 0; calling a true Shirt anything else ``miss`` (the missed
    diagnosis); every other mistake 1 (a false alarm, or a harmless mix-up of two other classes)."""
    C = D.zero_one_cost(10)
    C[SHIRT] *= miss  # the whole row: a missed Shirt costs the same whatever it is called
    return C


def expected_calibration_error(probs: Tensor, y: Tensor, bins: int = 15) -> tuple[float, list[tuple]]:
    """Top-label ECE with equal-width confidence bins; also the reliability diagram's (confidence, accuracy, count)
    per bin. It checks only the top probability of each image."""
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


def class_reliability(probs: Tensor, y: Tensor, k: int, changed: Tensor | None = None, bins: int = 10) -> list[dict]:
    """Calibration of one class's probability ``P(k|x)`` on every image, top class or not.

    Per equal-width bin of ``P(k|x)`` (the first bin includes 0): the number of images, the mean predicted
    ``P(k|x)``, the observed frequency of class ``k``, and how many of ``changed`` (a boolean mask) fall in it.
    """
    pk, is_k = probs[:, k], (y == k).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        mask = ((pk > lo) | (i == 0)) & (pk <= hi)
        if mask.any():
            rows.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "n": int(mask.sum()),
                    "mean_p": float(pk[mask].mean()),
                    "frequency": float(is_k[mask].mean()),
                    "changed": int((mask & changed).sum()) if changed is not None else 0,
                }
            )
    return rows


def outcome(pred: Tensor, y: Tensor, C: Tensor, abstain_cost: float = 0.0, weight: Tensor | None = None) -> dict:
    """How decisions fared on the true labels: coverage, accuracy on the accepted, mean cost per image (an
    abstention costs ``abstain_cost``), Shirts missed (called something else; an abstention goes to a person), false
    Shirt alarms. ``weight``: per-image weights (a test set
    with other class frequencies)."""
    w = torch.ones(len(y)) if weight is None else weight
    kept = pred != D.ABSTAIN
    cost = torch.where(kept, C[y, pred.clamp_min(0)], torch.full_like(w, abstain_cost))
    right = (pred == y).float()
    return {
        "coverage": float((w * kept).sum() / w.sum()),
        "accuracy": float((w * right).sum() / (w * kept).sum()) if kept.any() else float("nan"),
        "cost": float((w * cost).sum() / w.sum()),
        "shirts_missed": float((w * ((y == SHIRT) & kept & (pred != SHIRT))).sum()),  # abstained: not missed
        "false_alarms": float((w * ((y != SHIRT) & (pred == SHIRT))).sum()),
        "predicted_shirt": float((w * (pred == SHIRT)).sum()),
    }


CHOW_COSTS = (1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01)  # the cost of asking, with a mistake costing 1
SHIRT_ABSTAIN_COSTS = (1.0, 0.5, 0.3, 0.2, 0.1)  # the same, under the Shirt cost matrix


def decision_analysis(probs: Tensor, y: Tensor, C: Tensor, deploy_factor: float = 3.0) -> dict:
    """Everything exercise 4 prints: argmax vs the Bayes rule under ``C``; P(Shirt)'s calibration; Chow's rule (and
    its equality with abstaining under 0/1 costs); abstaining under ``C``; a prior ``deploy_factor`` times as many
    Shirts; top-label calibration."""
    argmax, bayes = probs.argmax(1), D.bayes_decisions(probs, C)
    changed = argmax != bayes
    res = {
        name: {
            **outcome(pred, y, C),
            "expected_cost": float(D.expected_costs(probs, C).gather(1, pred[:, None]).mean()),
        }  # the model's
        for name, pred in (("argmax", argmax), ("bayes", bayes))
    }
    res["changed"], res["changed_to_shirt"] = int(changed.sum()), int((changed & (bayes == SHIRT)).sum())
    res["changed_mean_p"] = float(probs[changed, SHIRT].mean())
    res["changed_frequency"] = float((y[changed] == SHIRT).float().mean())
    res["shirt_reliability"] = class_reliability(probs, y, SHIRT, changed)
    zero_one = D.zero_one_cost(probs.shape[1])
    res["chow"] = [
        {
            "c": c,
            "tau": D.chow_threshold(c),
            **outcome(D.chow_decisions(probs, D.chow_threshold(c)), y, zero_one, c),
            "differ": int(
                (D.chow_decisions(probs, D.chow_threshold(c)) != D.abstain_decisions(probs, zero_one, c)).sum()
            ),
        }
        for c in CHOW_COSTS
    ]
    res["reject_curve"] = [
        (
            t / 100,
            float((probs.max(1).values >= t / 100).float().mean()),
            outcome(D.chow_decisions(probs, t / 100), y, zero_one)["accuracy"],
        )
        for t in range(0, 100, 3)
    ]  # tau = 0.00, 0.03, ..., 0.99
    res["abstain"] = [{"c": c, **outcome(D.abstain_decisions(probs, C, c), y, C, c)} for c in SHIRT_ABSTAIN_COSTS]
    prior = torch.ones(probs.shape[1])
    prior[SHIRT] = deploy_factor
    weight = prior[y]  # each test Shirt counts deploy_factor times: a test set with that prevalence
    res["prior"] = {
        "factor": deploy_factor,
        "shirt_prior": float(prior[SHIRT] / prior.sum()),
        "as_trained": outcome(argmax, y, zero_one, weight=weight),
        "corrected": outcome(D.shift_prior(probs, prior).argmax(1), y, zero_one, weight=weight),
        "n_shirts": float(weight[y == SHIRT].sum()),
    }
    res["ece"], res["reliability"] = expected_calibration_error(probs, y)
    return res


def plot_decisions(res: dict, path: Path) -> None:
    """``risk_coverage.png``: Chow's reject option (accuracy vs coverage), and the reliability of the top label and
    of P(Shirt)."""
    from matplotlib.figure import Figure

    from softmax_lightning.figures import save_png

    fig = Figure(figsize=(9.0, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    taus, cov, acc = zip(*res["reject_curve"])
    ax1.plot(cov, acc, "-", lw=1.5)
    for r in res["chow"][1:]:  # the table's rows (c = 1 abstains on nothing: the curve's end)
        ax1.plot(r["coverage"], r["accuracy"], "o", ms=4, color="tab:blue")
        ax1.annotate(
            f"c={r['c']:g}",
            (r["coverage"], r["accuracy"]),
            fontsize=7,
            ha="right",
            xytext=(-5, 3),
            textcoords="offset points",
        )
    ax1.set_xlim(0.0, 1.03)
    ax1.set(
        xlabel="coverage (fraction not abstained)",
        ylabel="accuracy on the accepted",
        title="Chow's rule: abstain when max p < τ = 1 − c",
    )
    ax1.grid(True)
    conf, accs, _ = zip(*res["reliability"])
    rel = res["shirt_reliability"]
    ax2.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax2.plot(conf, accs, "s-", ms=4, label=f"top label: max p vs accuracy (ECE {res['ece']:.3f})")
    ax2.plot(
        [r["mean_p"] for r in rel],
        [r["frequency"] for r in rel],
        "o-",
        ms=4,
        label="P(Shirt) vs how often it is a Shirt",
    )
    ax2.axvspan(0.2, 0.5, color="tab:orange", alpha=0.12, lw=0, label="0.2–0.5: P(Shirt) too high")
    ax2.set(xlabel="predicted probability", ylabel="observed frequency", title="reliability (test set)")
    ax2.legend(fontsize=7, loc="upper left")
    ax2.grid(True)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
    save_png(fig, path)


def chapter_test_probs(data_dir: str, epochs: int = 10) -> tuple[Tensor, Tensor]:
    """Train the chapter's recipe (seed 0) with a plain Trainer; its probabilities on the test split, and the labels."""
    L.seed_everything(0, verbose=False)
    model, dm = SoftmaxRegression(), FashionMNISTDataModule(data_dir=data_dir)
    with _quiet():
        _trainer(max_epochs=epochs).fit(model, datamodule=dm)
    with torch.no_grad():
        return model(dm.test_set.X), dm.test_set.y  # (10000, 10), (10000,)


def exercise4(data_dir: str, out_dir: Path) -> dict:
    _title(4, "is the most probable class always the best answer? (the medical-diagnosis question)")
    probs, y = chapter_test_probs(data_dir)
    return report_decisions(probs, y, out_dir)


def report_decisions(probs: Tensor, y: Tensor, out_dir: Path) -> dict:
    """Exercise 4's printout and figure, from the test probabilities."""
    res = decision_analysis(probs, y, cost_matrix())
    print(
        f"Trained the chapter's recipe (10 epochs, seed 0, torch threads: {torch.get_num_threads()}); decisions on "
        f"the 10,000 test images (1,000 per class)."
    )

    print(
        f"\n(a) The Bayes rule under costs. The Shirt is the condition not to miss: calling a true Shirt anything "
        f"else costs {SHIRT_MISS:g} (a missed diagnosis); every other mistake costs 1 (a false alarm, or a harmless "
        f"mix-up); a right answer 0. Rule: predict argmin_k sum_j C[j,k] p_j."
    )
    print(
        f"{'rule':<7} {'accuracy':>9} {'mean cost (true labels)':>24} {'expected cost (model)':>22} "
        f"{'Shirts missed':>14} {'false Shirt alarms':>19}"
    )
    for name in ("argmax", "bayes"):
        r = res[name]
        print(
            f"{name:<7} {r['accuracy']:>9.4f} {r['cost']:>24.4f} {r['expected_cost']:>22.4f} "
            f"{r['shirts_missed']:>14.0f} {r['false_alarms']:>19.0f}"
        )
    a, b = res["argmax"], res["bayes"]
    print(
        f"It changed {res['changed']} decisions ({res['changed_to_shirt']} of them to Shirt: with these costs it "
        f"predicts Shirt whenever P(Shirt) > max_other / {SHIRT_MISS:g}). Accuracy fell by "
        f"{100 * (a['accuracy'] - b['accuracy']):.1f} points, the mean cost by "
        f"{100 * (1 - b['cost'] / a['cost']):.0f}%."
    )

    print(
        "\n(b) Can the rule trust P(Shirt)? It acts on P(Shirt) mostly where Shirt is NOT the top class, which "
        "top-label calibration (ECE, below) never checks. P(Shirt) on every test image against how often the "
        "image is a Shirt:"
    )
    print(f"{'P(Shirt)':>9} {'images':>7} {'mean P(Shirt)':>14} {'Shirt frequency':>16} {'decisions changed':>18}")
    for r in res["shirt_reliability"]:
        print(
            f"{r['lo']:>4.1f}-{r['hi']:<4.1f} {r['n']:>7d} {r['mean_p']:>14.3f} {r['frequency']:>16.3f} "
            f"{r['changed']:>18d}"
        )
    mid = [r for r in res["shirt_reliability"] if 0.2 <= r["lo"] < 0.5]
    over = [100 * (r["mean_p"] - r["frequency"]) for r in mid]
    print(
        f"Between 0.2 and 0.5, P(Shirt) is {min(over):.1f} to {max(over):.1f} points above the Shirt frequency "
        f"(overconfident), and there the rule changes {sum(r['changed'] for r in mid)} of its {res['changed']} "
        f"decisions. On all {res['changed']} changed decisions: mean P(Shirt) {res['changed_mean_p']:.3f}, Shirts "
        f"{res['changed_frequency']:.3f}."
    )

    print(
        "\n(c) Abstaining (Chow's rule). Asking a person costs c, a mistake 1. Predicting k costs 1 - p_k in "
        "expectation, so abstaining pays off exactly where 1 - max p > c, i.e. max p < tau = 1 - c."
    )
    print(
        f"{'c':>5} {'tau':>5} {'coverage':>9} {'accuracy on accepted':>21} {'mean cost per image':>20} "
        f"{'differ from expected-cost rule':>31}"
    )
    for r in res["chow"]:
        print(
            f"{r['c']:>5.2f} {r['tau']:>5.2f} {r['coverage']:>9.4f} {r['accuracy']:>21.4f} {r['cost']:>20.4f} "
            f"{r['differ']:>31d}"
        )

    print("\n(d) Abstaining under the Shirt costs: abstain where even the best class's expected cost exceeds c.")
    print(
        f"{'c':>5} {'coverage':>9} {'accuracy on accepted':>21} {'Shirts missed':>14} {'false Shirt alarms':>19} "
        f"{'mean cost per image':>20}"
    )
    for r in res["abstain"]:
        print(
            f"{r['c']:>5.2f} {r['coverage']:>9.4f} {r['accuracy']:>21.4f} {r['shirts_missed']:>14.0f} "
            f"{r['false_alarms']:>19.0f} {r['cost']:>20.4f}"
        )

    p = res["prior"]
    print(
        f"\n(e) A different prevalence. The training split has every class equally often. Where Shirts are "
        f"{p['factor']:g}x as common (prior {p['shirt_prior']:.2f} instead of 0.10), correct the probabilities: "
        f"p'(k|x) = p(k|x) pi'_k / pi_k, renormalised. Scored on the test set with each Shirt counted "
        f"{p['factor']:g} times (that prevalence), argmax decisions:"
    )
    print(
        f"{'probabilities':<16} {'accuracy':>9} {'Shirts missed':>14} {'predicted Shirt':>16}   "
        f"(of {p['n_shirts']:.0f} weighted Shirts)"
    )
    for name in ("as_trained", "corrected"):
        r = p[name]
        print(
            f"{name.replace('_', ' '):<16} {r['accuracy']:>9.4f} {r['shirts_missed']:>14.0f} "
            f"{r['predicted_shirt']:>16.0f}"
        )

    print(f"\n(f) Top-label calibration: expected calibration error (15 bins) = {res['ece']:.4f}")
    for c, acc, n in res["reliability"]:
        print(f"  confidence {c:.2f}: accuracy {acc:.2f} ({n} images)")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_decisions(res, out_dir / "risk_coverage.png")
    print(f"wrote {out_dir / 'risk_coverage.png'}")
    print(
        "No: argmax minimises the number of mistakes, the right goal only when every mistake costs the same. With "
        "costs, the Bayes rule picks the least expected cost; with a person to ask at cost c, abstain where every "
        "class costs more (Chow's rule under 0/1 costs); where the classes' frequencies differ from training, "
        "correct the probabilities first. Every rule trusts the probabilities it acts on, including those of "
        "classes that are not the top one. Try: scripts/predict.py --cost-matrix FILE --abstain-cost C --prior P"
    )
    return res


# ---------------------------------------------------------------- 5. a huge vocabulary
# W is (K, d) here, one row per class (word). `chapter_layout` stores it as the chapter does, d x K (W.T is a view);
# `row_layout` stores each class's d weights together, as an embedding table does. The math is the same.
def chapter_layout(d: int, K: int) -> Tensor:
    """Zero weights ``(K, d)`` stored as the chapter's ``d x K`` matrix: a class's weights are a strided column."""
    return torch.zeros(d, K).T


def row_layout(d: int, K: int) -> Tensor:
    """Zero weights ``(K, d)`` stored row by row: a class's weights are contiguous."""
    return torch.zeros(K, d)


def full_step(X: Tensor, y: Tensor, W: Tensor, b: Tensor, lr: float = 0.1) -> None:
    """One hand-written SGD step of softmax regression over all K classes (``W``: ``(K, d)``, ``b``: ``(K,)``)."""
    Wg, bg = W.detach().requires_grad_(), b.detach().requires_grad_()  # the same memory, tracked by autograd
    functional.cross_entropy(X @ Wg.T + bg, y).sum().backward()  # (batch, d) @ (d, K) -> (batch, K)
    with torch.no_grad():
        W.sub_(Wg.grad, alpha=lr / len(y))
        b.sub_(bg.grad, alpha=lr / len(y))


def sampled_logits(z_true: Tensor, z_neg: Tensor, y: Tensor, neg: Tensor, log_q: Tensor | None = None) -> Tensor:
    """Sampled softmax's logits, shape ``(batch, 1 + S)``: column 0 each example's true class, then ``S`` negatives.

    Args:
        z_true: the true classes' logits, ``(batch,)``; z_neg: the negatives' logits, ``(batch, S)``.
        y: true classes ``(batch,)``; neg: the ``S`` negatives, drawn with replacement from a proposal ``Q``.
        log_q: ``log(S * Q_k)`` for every class k, the expected number of draws of each class. Subtracting it (the
            log-Q correction) makes the softmax over the sample estimate the full softmax. ``None``: no correction;
            right only for a uniform ``Q``, whose correction is the same for every class and cancels.
    """
    if log_q is not None:
        z_true, z_neg = z_true - log_q[y], z_neg - log_q[neg]
    z_neg = z_neg.masked_fill(neg == y[:, None], float("-inf"))  # a draw of the true class is not a negative
    return torch.cat([z_true[:, None], z_neg], 1)  # (batch, 1 + S); the target is column 0


def sampled_step(
    X: Tensor, y: Tensor, W: Tensor, b: Tensor, neg: Tensor, lr: float = 0.1, log_q: Tensor | None = None
) -> None:
    """One SGD step of sampled softmax: each example's true class against the shared negatives ``neg``.

    Only the rows of W and b of the batch's classes and the negatives are read and written: the step's arithmetic
    does not depend on K. (Its memory traffic does, in the chapter's d x K layout: see exercise 5's table.)
    """
    cand, idx = torch.unique(torch.cat([y, neg]), return_inverse=True)  # the classes this step touches
    yl, nl = idx[: len(y)], idx[len(y) :]  # positions in cand
    Wc, bc = W[cand].detach().requires_grad_(), b[cand].detach().requires_grad_()  # (C, d), (C,): copies
    z_true = (X * Wc[yl]).sum(1) + bc[yl]  # (batch,)
    z_neg = X @ Wc[nl].T + bc[nl]  # (batch, d) @ (d, S) -> (batch, S)
    logits = sampled_logits(z_true, z_neg, y, neg, log_q)
    functional.cross_entropy(logits, torch.zeros_like(y)).sum().backward()
    with torch.no_grad():
        W.index_add_(0, cand, Wc.grad, alpha=-lr / len(y))
        b.index_add_(0, cand, bc.grad, alpha=-lr / len(y))


def param_mb(K: int, d: int) -> float:
    """Megabytes of W and b in float32. An optimizer with momentum keeps one more copy, Adam two."""
    return (d + 1) * K * 4 / 2**20


def time_steps(
    K: int, d: int = 784, batch: int = 256, n_sampled: int | None = None, layout=chapter_layout, reps: int = 5
) -> dict:
    """Seconds (the best of ``reps``: other processes only ever add time) and peak memory rise of one training step
    with ``K`` classes (full, or sampled softmax)."""
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(batch, d, generator=gen), torch.randint(0, K, (batch,), generator=gen)
    with PeakRSS() as mem:
        W, b = layout(d, K), torch.zeros(K)
        times = []
        for _ in range(reps + 1):  # the first one warms up
            neg = None if n_sampled is None else torch.randint(0, K, (n_sampled,), generator=gen)
            t = time.perf_counter()
            full_step(X, y, W, b) if neg is None else sampled_step(X, y, W, b, neg)
            times.append(time.perf_counter() - t)
    return {"K": K, "seconds": min(times[1:]), "peak_mb": mem.delta_mb, "param_mb": param_mb(K, d)}


def zipf_prior(K: int, s: float = 1.0) -> Tensor:
    """Zipf's law, as word frequencies follow: ``p_k`` proportional to ``1 / k**s`` for ranks k = 1..K."""
    w = torch.arange(1, K + 1, dtype=torch.float64) ** -s
    return (w / w.sum()).float()


def synthetic_task(
    K: int,
    d: int = 32,
    per_class: int = 20,
    noise: float = 1.5,
    prior: Tensor | None = None,
    n_test: int = 5000,
    seed: int = 0,
) -> tuple[Tensor, ...]:
    """Gaussian clusters around random class prototypes; ``per_class * K`` training and ``n_test`` test examples,
    both drawn with the class frequencies ``prior`` (default uniform)."""
    g = torch.Generator().manual_seed(seed)
    prior = torch.full((K,), 1.0 / K) if prior is None else prior
    proto = torch.randn(K, d, generator=g)
    y_train = torch.multinomial(prior, per_class * K, replacement=True, generator=g)
    y_test = torch.multinomial(prior, n_test, replacement=True, generator=g)
    X_train = proto[y_train] + noise * torch.randn(len(y_train), d, generator=g)
    X_test = proto[y_test] + noise * torch.randn(n_test, d, generator=g)
    return X_train, y_train, X_test, y_test


def evaluate(X: Tensor, y: Tensor, W: Tensor, b: Tensor, rare: Tensor) -> dict:
    """Accuracy and perplexity (``exp`` of the mean cross-entropy) over all K classes; accuracy on the examples of
    ``rare`` classes (a boolean mask over the K classes)."""
    with torch.no_grad():
        logits = X @ W.T + b  # (n, K): prediction always scores every class
        right = (logits.argmax(1) == y).float()
        return {
            "acc": float(right.mean()),
            "ppl": math.exp(float(functional.cross_entropy(logits, y).mean())),
            "rare_acc": float(right[rare[y]].mean()) if rare[y].any() else float("nan"),
        }


METHODS = {  # name: (proposal, log-Q corrected); None = the full softmax
    "full softmax": None,
    "sampled, uniform": ("uniform", False),
    "sampled, unigram, uncorrected": ("unigram", False),
    "sampled, unigram, log-Q": ("unigram", True),
}


def train_softmax(
    task: tuple[Tensor, ...],
    prior: Tensor,
    method: str,
    epochs: int = 20,
    lr: float = 1.0,
    n_sampled: int = 64,
    eval_at: tuple[int, ...] = (3, 20),
) -> dict:
    """Train softmax regression on ``task`` by ``METHODS[method]``; test metrics after the epochs in ``eval_at``.

    The unigram proposal is the class frequencies ``prior``; the rare classes are all but the most frequent 10%.
    """
    X_train, y_train, X_test, y_test = task
    K, d = len(prior), X_train.shape[1]
    rare = torch.ones(K, dtype=torch.bool)
    rare[prior.argsort(descending=True)[: K // 10]] = False
    proposal, corrected = METHODS[method] or (None, False)
    Q = torch.full((K,), 1.0 / K) if proposal == "uniform" else prior
    log_q = torch.log(n_sampled * Q) if corrected else None
    gen = torch.Generator().manual_seed(1)
    W, b = row_layout(d, K), torch.zeros(K)
    history, seconds = {}, 0.0
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        perm = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(perm), 256):
            idx = perm[i : i + 256]
            if proposal is None:
                full_step(X_train[idx], y_train[idx], W, b, lr)
            else:
                neg = torch.multinomial(Q, n_sampled, replacement=True, generator=gen)
                sampled_step(X_train[idx], y_train[idx], W, b, neg, lr, log_q)
        seconds += time.perf_counter() - t
        if epoch in eval_at:
            history[epoch] = evaluate(X_test, y_test, W, b, rare)
    return {"seconds": seconds, "history": history}


def train_compare(K: int = 1000, zipf: bool = False, methods: tuple[str, ...] | None = None, **kw) -> dict:
    """Every method of ``METHODS`` (the unigram ones only on the Zipf task) on one synthetic task."""
    prior = zipf_prior(K) if zipf else torch.full((K,), 1.0 / K)
    task = synthetic_task(K, prior=prior)
    methods = methods or [m for m in METHODS if zipf or "unigram" not in m]
    return {m: train_softmax(task, prior, m, **kw) for m in methods}


def sampled_gradient_error(
    logits: Tensor, y: Tensor, Q: Tensor, n_sampled: int, corrected: bool, draws: int = 200, seed: int = 0
) -> float:
    """How far sampled softmax's gradient (w.r.t. all K logits), averaged over ``draws`` samples from ``Q``, is from
    the full softmax's gradient ``softmax(z) - onehot(y)``: the mean L1 distance per example."""
    gen = torch.Generator().manual_seed(seed)
    log_q = torch.log(n_sampled * Q) if corrected else None
    mean_grad = torch.zeros_like(logits)
    for _ in range(draws):
        neg = torch.multinomial(Q, n_sampled, replacement=True, generator=gen)
        z = logits.detach().requires_grad_()  # (batch, K)
        lg = sampled_logits(z.gather(1, y[:, None])[:, 0], z[:, neg], y, neg, log_q)
        functional.cross_entropy(lg, torch.zeros_like(y)).sum().backward()
        mean_grad += z.grad / draws
    full = functional.cross_entropy_grad(logits, y)  # softmax(z) - onehot(y)
    return float((mean_grad - full).abs().sum(1).mean())


def exercise5(max_classes: int = 100_000) -> dict:
    _title(5, "predicting the next word: what does a huge vocabulary cost?")
    sizes = [k for k in (10, 100, 1_000, 10_000, 100_000) if k <= max_classes]
    print(
        f"One SGD step, batch 256, 784 synthetic features, float32, best of 5 (sampled: of 15), torch threads: "
        f"{torch.get_num_threads()}. Sampled softmax: each example's class against 1024 sampled negatives."
    )
    print(
        f"{'classes':>8} {'W,b MB':>8} {'full s/step':>12} {'full peak MB':>13} {'sampled s/step, d x K':>22} "
        f"{'sampled, K x d':>15}"
    )
    layouts = (chapter_layout, row_layout)
    sampled = {}  # the sampled steps are short: 3 interleaved rounds, the best of all, so a busy moment counts less
    for _ in range(3):
        for K in (k for k in sizes if k > 1024):
            for lay in layouts:
                t = time_steps(K, n_sampled=1024, layout=lay)["seconds"]
                sampled[K, lay.__name__] = min(t, sampled.get((K, lay.__name__), math.inf))
    rows = []
    for K in sizes:
        full = time_steps(K)
        row = {
            "full": full,
            "sampled": {lay.__name__: {"seconds": sampled[K, lay.__name__]} for lay in layouts} if K > 1024 else None,
        }
        rows.append(row)
        s = (
            f"{row['sampled']['chapter_layout']['seconds']:>22.4f} {row['sampled']['row_layout']['seconds']:>15.4f}"
            if K > 1024
            else f"{'-':>22} {'-':>15}"
        )
        print(f"{K:>8d} {full['param_mb']:>8.1f} {full['seconds']:>12.4f} {full['peak_mb']:>13.1f} {s}")
    if len(rows) >= 2 and rows[-1]["sampled"] and rows[-2]["sampled"]:
        r = lambda lay: rows[-1]["sampled"][lay]["seconds"] / rows[-2]["sampled"][lay]["seconds"]  # noqa: E731
        print(
            f"x10 classes: full step x{rows[-1]['full']['seconds'] / rows[-2]['full']['seconds']:.1f}, sampled "
            f"step x{r('chapter_layout'):.1f} with the chapter's d x K layout, x{r('row_layout'):.1f} with one row "
            f"per class. W and b grow x10 either way."
        )

    K, d, per_class, S, epochs = 1000, 32, 20, 64, 20
    print(
        f"\nTraining: synthetic classes (Gaussian clusters), K = {K}, {d} features, {per_class * K:,} training and "
        f"5,000 test examples with the same class frequencies; lr 1.0, batch 256, {S} sampled negatives per batch. "
        f"Accuracy and perplexity (exp of the mean test cross-entropy, scored over all {K} classes) after 3 and "
        f"{epochs} epochs; 'rare' = test examples of the 90% least frequent classes."
    )
    results = {}
    for zipf in (False, True):
        res = results["zipf" if zipf else "balanced"] = train_compare(K, zipf=zipf, n_sampled=S, epochs=epochs)
        print(
            f"\n{'Zipf classes (p_k ~ 1/k)' if zipf else 'balanced classes':<31} {'s/epoch':>8} "
            f"{'acc@3':>7} {'ppl@3':>7} {'acc@' + str(epochs):>7} {'ppl@' + str(epochs):>7} "
            f"{'rare acc@' + str(epochs):>12}"
        )
        for m, r in res.items():
            h3, hN = r["history"][3], r["history"][epochs]
            print(
                f"{m:<31} {r['seconds'] / epochs:>8.3f} {h3['acc']:>7.4f} {h3['ppl']:>7.1f} {hN['acc']:>7.4f} "
                f"{hN['ppl']:>7.1f} {hN['rare_acc']:>12.4f}"
            )
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(64, K, generator=g) * 2, torch.randint(0, K, (64,), generator=g)
    print(
        f"\nGradient check: 64 random logit rows, K = {K}, unigram (Zipf) proposal; the sampled gradient averaged "
        f"over 200 samples, its mean L1 distance to the full softmax gradient:"
    )
    print(f"{'negatives':>9} {'uncorrected':>12} {'log-Q':>7}")
    errs = {}
    for n in (S, 512):
        errs[n] = {c: sampled_gradient_error(z, y, zipf_prior(K), n, corrected=c) for c in (False, True)}
        print(f"{n:>9d} {errs[n][False]:>12.3f} {errs[n][True]:>7.3f}")
    print(
        "Every full step computes a (batch x K) score matrix and a gradient for all K x d weights: time and memory "
        "grow with K (at least linearly). Sampled softmax saves that compute and those activations, not the "
        "parameters (nor an optimizer's copies of them). Its step grows far slower than K, and hardly at all when "
        "each class's weights are stored together (one row per class, as an embedding table). With a non-uniform "
        "proposal the logits need the log-Q correction: with it the sampled gradient approaches the full one as the "
        "sample grows, without it it stays biased. After 3 epochs sampled softmax can match or beat the full "
        "softmax on accuracy; after 20 the full softmax wins on accuracy and perplexity in every comparison. "
        "Prediction still scores every class."
    )
    return {"steps": rows, "compare": results, "gradient_error": errs}


def check_out_dir(out: Path, flag: str = "--out_dir") -> None:
    """``out`` is, or is now created as, a folder where a file can be written (probed with a temp file)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a folder; pass a folder for risk_coverage.png")
    if (out / "risk_coverage.png").is_dir():
        raise UserError(f"{out / 'risk_coverage.png'} is a folder; move it away or pass another {flag}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(
            f"{flag} {out} is not a writable folder ({e.strerror or e}); pick a folder you can write to"
        ) from None


def check_data(data_dir: str) -> None:
    """The four Fashion-MNIST files are in ``data_dir`` (found or fetched as training would) and parse."""
    find_raw_files(data_dir)
    for split in ("train", "test"):
        load_split(data_dir, split)


def parse_args(argv: list[str] | None = None) -> tuple[list[int], argparse.Namespace]:
    """The exercises to run, in order, and the options; every option is checked here, before anything runs.

    Raises:
        UserError: an unknown exercise, an unusable ``--data.data_dir`` (exercises 3 and 4) or ``--out_dir``
            (exercise 4).
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("which", nargs="*", default=["all"], help="1-5 or all")
    p.add_argument(
        "--data.data_dir",
        "--data_dir",
        dest="data_dir",
        default="data",
        help="folder holding FashionMNIST/raw/ (as scripts/train.py's --data.data_dir); exercises 3, 4",
    )
    p.add_argument("--out_dir", default="lightning_logs/exercises", help="where exercise 4 writes risk_coverage.png")
    args = p.parse_args(argv)
    unknown = [w for w in args.which if w not in {"all", "1", "2", "3", "4", "5"}]
    if unknown:
        raise UserError(f"unknown exercise {unknown[0]!r}; choose among 1 2 3 4 5 or all")
    chosen = sorted({1, 2, 3, 4, 5} if "all" in args.which else {int(w) for w in args.which})
    if 3 in chosen or 4 in chosen:
        check_data(args.data_dir)
    if 4 in chosen:
        check_out_dir(Path(args.out_dir))
    return chosen, args


@exit_quietly_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    try:
        chosen, args = parse_args(argv)
        for n in chosen:
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
