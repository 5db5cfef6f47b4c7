"""Three trainers of the same model on the same data, timed in one process.

    python scripts/benchmark.py                    # project vs plain-loop floor vs d2l's own loop, 10 epochs each
    python scripts/benchmark.py --skip-d2l         # only project and floor
    python scripts/benchmark.py --d2l-epochs 2     # d2l per-epoch time from 2 epochs (its accuracy is not compared)

* project: ``SoftmaxRegression`` + ``FashionMNISTDataModule`` through the Trainer exactly as ``scripts/train.py``
  configures it (validation every epoch, TensorBoard logging, checkpointing, figures);
* floor: a plain PyTorch loop with identical math (init, softmax, cross-entropy, SGD, shuffle order) over the
  in-memory split, evaluating the test split every epoch;
* d2l: the chapter's code path: torchvision ``FashionMNIST`` + ``ToTensor``, ``DataLoader(shuffle=True,
  num_workers=4)``, the chapter's ``net``, ``cross_entropy``, ``sgd`` and ``evaluate_accuracy``.

Floor and project run alternately, ``--rounds`` times each (default 2), and their epochs are pooled: this VM's speed
drifts by +-15% over tens of seconds, and alternating spreads the drift over both. Prints seconds per epoch (median),
total per run, peak RSS during each part and final test accuracy, the ratios project/floor and d2l/project, and
writes ``benchmark.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import lightning as L
import torch
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException

from softmax_lightning import functional
from softmax_lightning.cli import make_cli, quiet_lightning, run_recipe  # the same CLI as scripts/train.py
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError, one_line
from softmax_lightning.fashion_mnist import find_raw_files
from softmax_lightning.io import check_path, exit_quietly_on_broken_pipe, write_json
from softmax_lightning.options import check_options
from softmax_lightning.profiling import PeakRSS
from softmax_lightning.runs import RunFolder


class EpochTimer(L.Callback):
    """Wall time of each epoch, validation and end-of-epoch work included (the figures drawn once at the end of
    fitting are not)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    @property
    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def bench_project(epochs: int, data_dir: str, root_dir: str, *args: str) -> dict:
    """The Trainer path, configured by the same CLI as ``scripts/train.py`` (``args``: more CLI options)."""
    t0, timer = time.perf_counter(), EpochTimer()
    cli = make_cli(
        [
            *args,
            f"--trainer.max_epochs={epochs}",
            f"--data.data_dir={data_dir}",
            f"--trainer.default_root_dir={root_dir}",
        ]
    )  # (the benchmark's own settings last: they win)
    cli.trainer.callbacks.insert(0, timer)
    try:
        metrics = run_recipe(cli)
    finally:
        cli.run_folder.release(failed=False)
    return {
        "epoch_s": timer.epochs,
        "total_s": time.perf_counter() - t0,
        "test_acc": metrics["test_acc"],
        "train_loss": metrics["train_loss"],
        "train_acc": metrics["train_acc"],
    }


def bench_floor(
    epochs: int, data_dir: str, seed: int = 0, batch_size: int = 256, lr: float = 0.1, device: str = "cpu"
) -> dict:
    """A plain loop with the project's math and data: the same init, softmax, cross-entropy (autograd), SGD update,
    shuffle order (``randperm`` seeded with ``seed + epoch``) and one ``index_select`` per minibatch; the chapter's
    Accumulator for train loss and accuracy; the test split evaluated every epoch in batches of ``batch_size``."""
    t0 = time.perf_counter()
    dm = FashionMNISTDataModule(data_dir=data_dir, batch_size=batch_size, seed=seed)
    dm.setup("fit")
    (Xtr, ytr), (Xte, yte) = ((d.X.to(device), d.y.to(device)) for d in (dm.train_set, dm.test_set))
    torch.manual_seed(seed)
    W = torch.normal(0, 0.01, size=(784, 10)).to(device).requires_grad_()
    b = torch.zeros(10, device=device, requires_grad=True)
    times, acc = [], 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed + epoch)).to(device)
        loss_sum, correct, n = 0.0, 0.0, 0  # the chapter's Accumulator(3) in train_epoch_ch3
        for idx in order.split(batch_size):
            X, y = Xtr.index_select(0, idx), ytr.index_select(0, idx)  # as InMemoryDataset.__getitems__
            logits = X.reshape(-1, 784) @ W + b
            l = functional.cross_entropy(logits, y)
            l.sum().backward()
            with torch.no_grad():
                for p in (W, b):  # d2l.sgd, written as ChapterSGD writes it: p -= lr * p.grad / batch_size
                    p.sub_(p.grad * (lr / len(y)))
                    p.grad.zero_()
            loss_sum, correct, n = (
                loss_sum + float(l.sum()),
                correct + float(functional.accuracy(logits, y)),
                n + len(y),
            )
        with torch.no_grad():
            test_correct = sum(
                float(functional.accuracy(Xte[i : i + batch_size].reshape(-1, 784) @ W + b, yte[i : i + batch_size]))
                for i in range(0, len(yte), batch_size)
            )
        acc = test_correct / len(yte)
        times.append(time.perf_counter() - start)
    return {
        "epoch_s": times,
        "total_s": time.perf_counter() - t0,
        "test_acc": acc,
        "train_loss": loss_sum / n,
        "train_acc": correct / n,
    }


def bench_d2l(epochs: int, data_dir: str, batch_size: int = 256, lr: float = 0.1) -> dict:
    """The chapter's own code, cell by cell (``d2l.load_data_fashion_mnist`` + ``train_ch3``)."""
    from torch.utils import data
    from torchvision import datasets, transforms

    t0 = time.perf_counter()
    trans = transforms.ToTensor()
    mnist_train = datasets.FashionMNIST(root=data_dir, train=True, transform=trans, download=False)
    mnist_test = datasets.FashionMNIST(root=data_dir, train=False, transform=trans, download=False)
    train_iter = data.DataLoader(mnist_train, batch_size, shuffle=True, num_workers=4)
    test_iter = data.DataLoader(mnist_test, batch_size, shuffle=False, num_workers=4)
    torch.manual_seed(0)
    W = torch.normal(0, 0.01, size=(784, 10), requires_grad=True)
    b = torch.zeros(10, requires_grad=True)

    def net(X):
        return functional.softmax_naive(torch.matmul(X.reshape((-1, W.shape[0])), W) + b)

    def evaluate_accuracy(data_iter):
        metric = [0.0, 0.0]
        with torch.no_grad():
            for X, y in data_iter:
                metric[0] += float(functional.accuracy(net(X), y))
                metric[1] += y.numel()
        return metric[0] / metric[1]

    times, acc = [], 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        for X, y in train_iter:
            l = functional.cross_entropy_naive(net(X), y)
            l.sum().backward()
            with torch.no_grad():  # d2l.sgd
                for param in (W, b):
                    param -= lr * param.grad / X.shape[0]
                    param.grad.zero_()
        acc = evaluate_accuracy(test_iter)
        times.append(time.perf_counter() - start)
    return {"epoch_s": times, "total_s": time.perf_counter() - t0, "test_acc": acc}


def accelerator_args(device: str) -> list[str]:
    """The project's Trainer on ``device``: the CPU unless ``--device cuda``, whatever Lightning would pick."""
    return ["--trainer.accelerator=cpu"] if device == "cpu" else ["--trainer.accelerator=gpu", "--trainer.devices=1"]


def measure(args: argparse.Namespace, d2l_epochs: int) -> dict[str, dict]:
    """Run floor and project alternately ``args.rounds`` times (pooling their epochs), then d2l; time each."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as root_dir:
        accel = accelerator_args(args.device) + project_args(args.project_args)
        schedule = [
            ("floor", lambda: bench_floor(args.epochs, args.data_dir, device=args.device)),
            ("project", lambda: bench_project(args.epochs, args.data_dir, root_dir, *accel)),
        ] * args.rounds
        if not args.skip_d2l and args.device == "cpu":
            schedule.append(("d2l", lambda: bench_d2l(d2l_epochs, args.data_dir)))
        for name, fn in schedule:
            with PeakRSS() as rss:
                r = fn()
            print(
                f"{name}: {statistics.median(r['epoch_s']):.3f} s/epoch, test acc {r['test_acc']:.4f}", file=sys.stderr
            )
            if name in results:  # a later round: pool the epochs, keep the worst peak and the mean total
                prev = results[name]
                r.update(
                    epoch_s=prev["epoch_s"] + r["epoch_s"],
                    total_s=(prev["total_s"] + r["total_s"]) / 2,
                    peak_rss_mb=max(prev["peak_rss_mb"], rss.peak_mb),
                )
            else:
                r["peak_rss_mb"] = rss.peak_mb
            r["median_epoch_s"] = statistics.median(r["epoch_s"])
            results[name] = r
    return results


MAX_EPOCHS, MAX_ROUNDS = 1000, 100  # each epoch takes seconds per trainer: beyond these, a typo
OWN = {
    "--trainer.max_epochs": "--epochs",
    "--data.data_dir": "--data.data_dir",
    "--trainer.default_root_dir": "nothing (the runs go to a temporary folder)",
}  # what the benchmark sets itself


def project_args(text: str) -> list[str]:
    """``--project-args`` split as a shell would (one ``UserError`` line for unbalanced quotes)."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise UserError(f"--project-args {text!r} cannot be split into options ({e}); balance its quotes") from None


def check_project_args(tokens: list[str], args: argparse.Namespace) -> None:
    """Refuse ``--project-args`` that set what the benchmark sets itself, or that ``scripts/train.py`` would refuse:
    the project's options are checked (by building its model, data module and Trainer once, in a temporary folder,
    without training) before anything is timed."""
    for token in tokens:
        name = token.split("=", 1)[0]
        if name in OWN:
            raise UserError(
                f"--project-args may not set {name}: the benchmark sets it for all three loops; use {OWN[name]}"
            )
        if name in ("fit", "validate", "test", "predict", "--ckpt_path"):
            raise UserError(f"--project-args takes scripts/train.py's options for a fresh fit, not {name!r}; drop it")
        if name in ("-h", "--help", "--print_config") or name.endswith(".help"):
            raise UserError(f"--project-args holds {name}, an option that prints and stops; drop it")
    accel = accelerator_args(args.device)
    run_folder = RunFolder()
    with tempfile.TemporaryDirectory() as root_dir, contextlib.redirect_stdout(sys.stderr), quiet_lightning():
        try:
            make_cli(
                [
                    *check_options([*accel, *tokens]),
                    f"--trainer.max_epochs={args.epochs}",
                    f"--data.data_dir={args.data_dir}",
                    f"--trainer.default_root_dir={root_dir}",
                ],
                run_folder,
            )
        except (ArgumentError, MisconfigurationException, ValueError, TypeError) as e:
            raise UserError(f"--project-args: {one_line(e)}") from None
        except SystemExit:  # --help or --print_config: they print and stop
            raise UserError(
                "--project-args holds an option that prints and stops (--help, --print_config); drop it"
            ) from None
        finally:
            run_folder.release(failed=True)


def check_arguments(args: argparse.Namespace) -> None:
    """Every option, before anything is loaded or timed."""
    for flag, value, most in (
        ("--epochs", args.epochs, MAX_EPOCHS),
        ("--rounds", args.rounds, MAX_ROUNDS),
        ("--d2l-epochs", args.d2l_epochs, MAX_EPOCHS),
    ):
        if value is not None and not 1 <= value <= most:
            raise UserError(f"{flag} must be >= 1 and <= {most}, got {value}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU here; run without --device (CPU)")
    out = check_path(args.out, "--out", "JSON file path")
    if out.is_dir() or (os.path.lexists(out) and not out.is_file()):
        raise UserError(
            f"cannot write {args.out}: it is a folder, device or FIFO, not a regular file; pass --out with a file path"
        )
    out_dir = out.resolve().parent
    if not (out_dir.is_dir() and os.access(out_dir, os.W_OK)):
        raise UserError(f"cannot write {args.out}: {out_dir} is not a writable folder; pass --out with another path")
    check_path(args.data_dir, "--data.data_dir", "folder path")
    tokens = project_args(args.project_args)
    find_raw_files(args.data_dir)
    check_project_args(tokens, args)


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one ``error: ...`` line (exit code 2), like every other refusal here."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)}; see {self.prog} --help\n")


@exit_quietly_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code: 0, 1 (the loops' accuracies disagree), 2 (bad input: one ``error:`` line
    on stderr), 141 (stdout was closed early, e.g. ``| head``). The table goes to stdout; progress, the training's
    own lines and the file written go to stderr."""
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help=f"epochs per run, 1..{MAX_EPOCHS}")
    parser.add_argument(
        "--d2l-epochs", type=int, default=None, help=f"epochs for the d2l loop, 1..{MAX_EPOCHS} (default: --epochs)"
    )
    parser.add_argument("--skip-d2l", action="store_true")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help=f"1..{MAX_ROUNDS}: run floor and project alternately this many times and pool their "
        f"epochs: this machine's speed drifts by +-15%% over tens of seconds, and alternating "
        f"spreads the drift over both",
    )
    parser.add_argument(
        "--data.data_dir",
        "--data-dir",
        dest="data_dir",
        default="data",
        help="folder holding FashionMNIST/raw/ (as scripts/train.py's --data.data_dir)",
    )
    parser.add_argument("--out", default="benchmark.json")
    parser.add_argument(
        "--project-args",
        default="",
        help="more scripts/train.py options for the project's runs, e.g. \"--trainer.logger false "
        '--trainer.enable_checkpointing false --trainer.enable_progress_bar false" to time the '
        "module and data module in a bare Trainer",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="cuda: floor and project on the GPU (project: --trainer.accelerator gpu); d2l is skipped",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0), or a usage error (2) that argparse has printed
        return e.code if isinstance(e.code, int) else 2
    try:
        check_arguments(args)
        d2l_epochs = args.d2l_epochs or args.epochs
        with contextlib.redirect_stdout(sys.stderr):  # the trainers' own lines are progress, not results
            results = measure(args, d2l_epochs)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(
        f"{'':8} {'s/epoch':>8} {'total s':>8} {'epochs':>6} {'peak RSS MB':>11} {'test acc':>8}   "
        f"(s/epoch: median over all epochs; total: per run)"
    )
    for name, r in results.items():
        print(
            f"{name:8} {r['median_epoch_s']:8.3f} {r['total_s']:8.2f} {len(r['epoch_s']):6d} "
            f"{r['peak_rss_mb']:11.0f} {r['test_acc']:8.4f}"
        )
    ratios = {"project/floor": results["project"]["median_epoch_s"] / results["floor"]["median_epoch_s"]}
    if "d2l" in results:
        ratios["d2l/project"] = results["d2l"]["median_epoch_s"] / results["project"]["median_epoch_s"]
    print("\n" + "   ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    compared = {k: r["test_acc"] for k, r in results.items() if k != "d2l" or d2l_epochs == args.epochs}
    spread = max(compared.values()) - min(compared.values())
    agree = spread <= 0.01
    if not agree:
        print(
            f"\n!!! TEST ACCURACIES DISAGREE by {spread:.4f} (> 0.01): the three loops do not compute the same "
            f"thing !!!",
            file=sys.stderr,
        )
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    if args.device == "cuda":
        machine += f", GPU {torch.cuda.get_device_name()}"
    print(f"machine: {machine}")
    try:
        write_json(args.out, {"machine": machine, "results": results, "ratios": ratios, "accuracies_agree": agree})
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
