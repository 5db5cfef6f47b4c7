"""Shared fixtures: the real Fashion-MNIST files, one full run of the chapter's recipe, synthetic IDX writers."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import resource
import shlex
import signal
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from softmax_lightning.cli import main
from softmax_lightning.fashion_mnist import find_raw_files

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the environment of a tool run as a process: one torch thread


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data (found or fetched the same way `make train` does)."""
    find_raw_files(DATA_DIR)
    return DATA_DIR


def train_args(root: Path, *args: str) -> list[str]:
    """`scripts/train.py` options for a quiet run under ``root`` on the real data."""
    return [
        f"--trainer.default_root_dir={root}",
        f"--data.data_dir={DATA_DIR}",
        "--trainer.enable_progress_bar=false",
        *args,
    ]


def run_dirs(root: Path) -> list[Path]:
    """The run folders under ``root``, oldest first (Lightning's layout: root/lightning_logs/version_N)."""
    return sorted((root / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def run_train(root: Path, *args: str) -> dict:
    """Run `scripts/train.py`'s main in-process; return the newest run's metrics.json (asserts exit code 0)."""
    assert main(train_args(root, *args)) == 0
    metrics = json.loads((run_dirs(root)[-1] / "metrics.json").read_text())
    metrics["run_dir"] = str(run_dirs(root)[-1])
    return metrics


@pytest.fixture(scope="session")
def chapter_run(tmp_path_factory, data_dir) -> dict:
    """The chapter's recipe, trained once for the whole session: its metrics.json plus ``run_dir``."""
    return run_train(tmp_path_factory.mktemp("chapter"))


def write_idx(path: Path, arr: np.ndarray, magic: int | None = None, gz: bool = False) -> Path:
    """Write ``arr`` (uint8) as an IDX file (optionally gzipped); ``magic`` overrides the header's magic."""
    arr = np.asarray(arr, dtype=np.uint8)
    magic = (0x0800 | arr.ndim) if magic is None else magic
    data = struct.pack(f">{1 + arr.ndim}I", magic, *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_fake_split(raw: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Four small, valid IDX files in torchvision's layout (``raw`` = data_dir/FashionMNIST/raw)."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw


NOISE = ("GPU available", "TPU available", "HPU available")  # Lightning's own info lines, before training starts


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too), by relative path, with its checksum."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error_line(err: str, *fragments: str) -> str:
    """The single ``error:`` line on stderr (besides Lightning's device info), with no traceback, holding each
    fragment."""
    lines = [line for line in err.strip().splitlines() if not line.startswith(NOISE)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint carries."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def craft_checkpoint(good: Path, path: Path, marker: Path) -> Path:
    """A copy of the good checkpoint ``good`` (real weights and hyper-parameters) that also carries a ``Payload``
    creating ``marker`` when unpickled unsafely."""
    import torch

    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    ckpt["callbacks"] = {"Payload": Payload(f"touch {shlex.quote(str(marker))}")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def run_predict(*args, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """``scripts/predict.py`` as a real process, with one torch thread."""
    return subprocess.run(
        [sys.executable, "scripts/predict.py", *map(str, args)],
        cwd=ROOT,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def quiet_trainer(**kw) -> L.Trainer:
    """A user's bare ``Trainer`` in this process: no logger, checkpoints, progress bar, summary or sanity check,
    unless ``kw`` says otherwise."""
    kw = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **kw,
    }
    return L.Trainer(**kw)


@contextmanager
def bounded(seconds: int = 30, extra_bytes: int = 1 << 30):
    """Run a block as in a sandbox: more than ``extra_bytes`` of new address space raises MemoryError, more than
    ``seconds`` raises TimeoutError (also out of a blocking ``open`` or ``read`` on a FIFO)."""
    vm = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + extra_bytes if hard == resource.RLIM_INFINITY else min(vm + extra_bytes, hard)

    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (a hang, or reading without end)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def benchmark():
    """``scripts/benchmark.py`` as a module (its main reads ``sys.argv``)."""
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
