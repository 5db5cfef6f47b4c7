"""Property-based tests (Hypothesis) of every option of ``scripts/train.py`` and ``scripts/predict.py``.

Each example draws ONE option with one value (numbers at, inside and beyond every limit, negative, zero, nan, inf,
huge integers; strings empty, non-ASCII, very long; paths to a folder, to nothing, to a junk file, to a device or a
FIFO) and runs the tool's ``main`` in-process, in a fresh working folder holding small synthetic data, with tiny
limits so that a valid value trains for a moment only. Whatever the value, the tool must:

* return 0 or 2 (no exception escapes ``main``; "Traceback" never on stderr);
* on 2, print exactly one ``error:`` line and leave the working folder as it was: nothing created, nothing changed
  (a run that diverged after its first checkpoint keeps that checkpoint: it is a result, not a refusal);
* stay within a memory bound (4 GiB more address space) and a time bound (``bounded``).

Options that start processes or wait on other machines (``--trainer.devices``, ``--trainer.num_nodes``,
``--trainer.strategy``, ``--data.num_workers`` > 0) are left out here; ``tests/test_options.py`` covers their
refusals. The number of examples per tool is ``FUZZ_EXAMPLES`` (default 25); the examples are derandomized, so a
run is reproducible, unless ``FUZZ_SEED`` picks another sequence::

    FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import functools
import io
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, event, given, note, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from softmax_lightning import (  # noqa: E402
    cli,
    fashion_mnist,
    predict,
)
from softmax_lightning.model import SoftmaxRegression  # noqa: E402
from tests.conftest import NOISE, bounded, write_fake_split  # noqa: E402
from tests.test_options import tree  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SECONDS = int(os.environ.get("FUZZ_SECONDS", "180"))  # per example: a valid run takes a few seconds
MEMORY = 4 << 30  # per example: more address space than this raises MemoryError
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="FUZZ_SEED" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
SEEDED = seed(int(os.environ["FUZZ_SEED"])) if "FUZZ_SEED" in os.environ else (lambda f: f)

# ---------------------------------------------------------------------------------------------------- values
HUGE = [2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 10**30, -(2**63), -(10**30)]
FLOAT_WORDS = ["nan", "-nan", "inf", "-inf", ".nan", ".inf", "-.inf", "1e309", "-1e309", "1e-320", "0.0", "-0.0"]


def ints(*limits: int) -> st.SearchStrategy[str]:
    """Integers at, just inside and just beyond each limit, small ones, zero, negatives and huge ones (as text)."""
    edges = sorted({v for n in limits for v in (n - 1, n, n + 1)} | {0, -1, 1})
    return st.one_of(st.sampled_from(edges), st.integers(-1000, 1000), st.sampled_from(HUGE)).map(str)


def floats(*limits: float) -> st.SearchStrategy[str]:
    """Floats at and around each limit, any float (nan and inf too), the words YAML and Python read as nan/inf, and
    integers (as text)."""
    edges = sorted({v for x in limits for v in (x, np.nextafter(x, -np.inf), np.nextafter(x, np.inf))} | {0.0})
    return st.one_of(
        st.sampled_from([repr(float(v)) for v in edges]),
        st.floats().map(repr),
        st.sampled_from(FLOAT_WORDS),
        ints(0, 1),
    )


def words(*valid: str) -> st.SearchStrategy[str]:
    """The valid choices, near misses (case, spaces), empty, non-ASCII and very long strings."""
    near = [v.upper() for v in valid] + [f" {v}" for v in valid] + [v[:-1] for v in valid if v]
    return st.one_of(
        st.sampled_from(
            [*valid, *near, "", "日本語", "é" * 300, "x" * 5000, "null", "true", "[1, 2]", "{a: 1}", "-1", "1e309"]
        ),
        st.text(max_size=40),
    )


BOOLS = st.sampled_from(["true", "false", "True", "yes", "no", "on", "1", "0", "null", "", "maybe", "[]"])
# Paths, resolved in each example's working folder (``resolve``): read-only ones may be the real /dev/null; paths
# a tool may write are given a device node of its own instead, never /dev/null itself.
PATHS = [
    "",
    "FOLDER",
    "MISSING",
    "JUNK",
    "FIFO",
    "DEVICE",
    "NOTES_AS_FOLDER",
    ".",
    "LONG_NAME",
    "DEEP_PATH",
    "NON_ASCII",
    "x\x00y",
]
INPUT_PATHS = st.sampled_from([*PATHS, "/dev/null", "/dev/zero"])
OUTPUT_PATHS = st.sampled_from(PATHS)


def resolve(value: str, cwd: Path) -> str:
    """A path token as a real path in ``cwd`` (making what it names)."""
    if value == "FOLDER":
        (cwd / "folder").mkdir(exist_ok=True)
        return "folder"
    if value == "MISSING":
        return "missing/x"
    if value == "JUNK":
        (cwd / "junk.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
        return "junk.bin"
    if value == "FIFO":
        os.mkfifo(cwd / "fifo")
        return "fifo"
    if value == "DEVICE":
        try:
            os.mknod(cwd / "device", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers, our own node
        except PermissionError:
            os.mkfifo(cwd / "device")
        return "device"
    if value == "NOTES_AS_FOLDER":
        (cwd / "notes.txt").write_text("my notes\n")
        return "notes.txt/sub"
    if value == "LONG_NAME":
        return "n" * 256
    if value == "DEEP_PATH":
        return "/".join(["d" * 200] * 25)
    if value == "NON_ASCII":
        return "données/日本語 ☃"
    return value


# ---------------------------------------------------------------------------------------------------- the options
TRAIN = {
    "--model.lr": floats(0.0, 0.1, 1e6),
    "--model.init_std": floats(0.0, 0.01, 1e6),
    "--model.momentum": floats(0.0, 0.9, 1.0),
    "--model.weight_decay": floats(0.0, 1e6),
    "--model.softmax": words("stable", "naive"),
    "--model.lr_schedule": words("constant", "cosine"),
    "--model.nesterov": BOOLS,
    "--data.batch_size": ints(1, 64, 10**6),
    "--data.val_size": ints(0, 63, 64, 10**6),
    "--data.num_workers": ints(-1, 65).filter(lambda v: not 0 < int(v) <= 64),  # (never start worker processes)
    "--data.standardize": BOOLS,
    "--data.download": st.sampled_from(["false", "0", "no", "maybe", ""]),  # (never try the network)
    "--data.data_dir": INPUT_PATHS,
    "--figures.labels": words("en", "zh"),
    "--figures.n_images": ints(1, 64),
    "--seed_everything": st.one_of(ints(0, 2**32 - 1), BOOLS),
    "--trainer.max_epochs": ints(-1, 0, 1, 10**9),
    "--trainer.max_steps": ints(-1, 0, 10**9),
    "--trainer.min_epochs": ints(0, 10**9),
    "--trainer.min_steps": ints(0, 10**9),
    "--trainer.check_val_every_n_epoch": st.one_of(ints(1, 10**9), st.just("null")),
    "--trainer.val_check_interval": st.one_of(floats(0.0, 1.0), ints(0, 1, 10**9)),
    "--trainer.num_sanity_val_steps": ints(-1, 0, 10**9),
    "--trainer.log_every_n_steps": ints(0, 10**9),
    "--trainer.reload_dataloaders_every_n_epochs": ints(0, 10**9),
    "--trainer.limit_train_batches": st.one_of(floats(0.0, 1.0), ints(0, 1)),
    "--trainer.limit_val_batches": st.one_of(floats(0.0, 1.0), ints(0, 1)),
    "--trainer.limit_test_batches": st.one_of(floats(0.0, 1.0), ints(0, 1)),
    "--trainer.overfit_batches": st.one_of(floats(0.0, 1.0), ints(0, 1)),
    "--trainer.fast_dev_run": st.one_of(ints(0, 1), BOOLS),
    "--trainer.accumulate_grad_batches": ints(0, 1, 2),
    "--trainer.gradient_clip_val": floats(0.0, 1.0),
    "--trainer.gradient_clip_algorithm": words("value", "norm"),
    "--trainer.max_time": st.one_of(
        words("00:00:00:01", "00:01:00:00"), st.sampled_from(["99999999:00:00:00", "-1:00:00:00"])
    ),
    "--trainer.precision": words(
        "32-true", "64-true", "bf16-mixed", "16-mixed", "16-true", "bf16-true", "32", "transformer-engine"
    ),
    "--trainer.accelerator": words("cpu", "auto", "gpu", "cuda", "mps", "tpu"),
    "--trainer.deterministic": st.one_of(BOOLS, st.just("warn")),
    "--trainer.enable_checkpointing": BOOLS,
    "--trainer.enable_model_summary": BOOLS,
    "--trainer.logger": BOOLS,
    "--trainer.benchmark": BOOLS,
    "--trainer.inference_mode": BOOLS,
    "--trainer.detect_anomaly": BOOLS,
    "--trainer.barebones": BOOLS,
    "--trainer.model_registry": words("my-model"),
    "--trainer.default_root_dir": OUTPUT_PATHS,
    "--ckpt_path": st.one_of(INPUT_PATHS, st.just("last")),
    "--weights_only": BOOLS,
    "--config": st.one_of(INPUT_PATHS, st.sampled_from(["{model: {lr: 0.5}}", "[1, 2", "trainer: {max_steps: 1}"])),
    "--model": st.one_of(INPUT_PATHS, st.sampled_from(["{lr: 0.5}", "{lr: -1}", "{num_inputs: 5}"])),
    "--data": st.one_of(INPUT_PATHS, st.sampled_from(["{batch_size: 0}", "{val_size: 8}"])),
    "--trainer": INPUT_PATHS,
    "--figures": INPUT_PATHS,
}
PATH_OPTIONS = {
    "--data.data_dir",
    "--trainer.default_root_dir",
    "--ckpt_path",
    "--config",
    "--model",
    "--data",
    "--trainer",
    "--figures",
}
TRAIN_BASE = [
    "--data.data_dir=data",
    "--data.download=false",
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
]

PREDICT = {
    "--n": ints(1, 32, 10_000),
    "--explain-rows": ints(1, 32),  # (with --explain)
    "--reject-below": floats(0.0, 1.0),
    "--labels": words("en", "zh"),
    "--out": OUTPUT_PATHS,
    "--root_dir": INPUT_PATHS,
    "--data.data_dir": INPUT_PATHS,
    "--ckpt_path": st.one_of(INPUT_PATHS, st.just("last")),
    "--cost-matrix": st.one_of(INPUT_PATHS, st.just("COST")),
    "IMAGE": st.one_of(INPUT_PATHS, st.just("PNG")),
    "FLAG": st.sampled_from(["--invert", "--no-invert", "--json", "--explain", "--help", "--bogus", "-n"]),
}
PREDICT_PATHS = {"--out", "--root_dir", "--data.data_dir", "--ckpt_path", "--cost-matrix"}
PREDICT_BASE = ["--ckpt_path=model.ckpt", "--data.data_dir=data"]


# ---------------------------------------------------------------------------------------------------- the harness


@contextmanager
def working_folder():
    """A fresh temporary folder as the working directory, with the synthetic data in ``data/``; removed after."""
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        cwd = Path(d)
        write_fake_split(fashion_mnist.raw_dir(cwd / "data"))
        os.chdir(cwd)
        try:
            yield cwd
        finally:
            os.chdir(home)


def check_outcome(code: int, err: str, cwd: Path, before: dict[str, str]) -> None:
    """0 or 2; no traceback; on 2, one ``error:`` line and the folder as it was (but a checkpoint written before
    training diverged)."""
    assert code in (0, 2), (code, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    if code != 2:
        return
    lines = [line for line in err.strip().splitlines() if not line.startswith(NOISE)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    after = tree(cwd)
    if lines[0].startswith("error: training diverged"):  # a result: the checkpoints before the divergence stay
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert all(k.split("/")[0] == "lightning_logs" for k in changed), sorted(changed)
        assert not changed or any("/checkpoints/" in k for k in changed), sorted(changed)
    else:
        assert after == before, sorted(set(after) ^ set(before))


def run_and_check(tool: str, main, args: list[str], cwd: Path, capsys) -> None:
    """Run ``scripts/<tool>``'s ``main(args)`` in this process, within the time and memory bounds, and check its
    outcome (``check_outcome``)."""
    note(f"scripts/{tool} {' '.join(args)}")
    before = tree(cwd)
    capsys.readouterr()
    with bounded(SECONDS, MEMORY):
        code = main(args)
    _, err = capsys.readouterr()
    event(f"exit code {code}")  # (--hypothesis-show-statistics: how many examples ran, how many were refused)
    check_outcome(code, err, cwd, before)


@pytest.fixture
def no_system_data(monkeypatch):
    """No Debian package to unpack 60,000 images from: a data_dir without the files is refused, quickly."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", Path("/nonexistent/fashion-mnist"))


def option_and_value(options: dict) -> st.SearchStrategy[tuple[str, str]]:
    return st.one_of(*[st.tuples(st.just(flag), values) for flag, values in options.items()])


@SEEDED
@FUZZ
@given(option=option_and_value(TRAIN))
def test_train_options_fuzz(option, capsys, no_system_data):
    flag, value = option
    with working_folder() as cwd:
        if flag in PATH_OPTIONS:
            value = resolve(value, cwd)
        args = [*TRAIN_BASE, f"{flag}={value}"]
        run_and_check("train.py", cli.main, args, cwd, capsys)


@functools.cache
def checkpoint_bytes() -> bytes:
    """An untrained model's checkpoint (weights and hyper-parameters), as predict loads it."""
    torch.manual_seed(0)
    model = SoftmaxRegression()
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, buf)
    return buf.getvalue()


@SEEDED
@FUZZ
@given(option=option_and_value(PREDICT))
def test_predict_options_fuzz(option, capsys, no_system_data):
    from PIL import Image

    flag, value = option
    with working_folder() as cwd:
        (cwd / "model.ckpt").write_bytes(checkpoint_bytes())
        Image.fromarray(np.full((30, 20), 200, dtype=np.uint8)).save(cwd / "shirt.png")
        (cwd / "cost.txt").write_text(
            "\n".join(" ".join("0" if i == j else "1" for j in range(10)) for i in range(10)) + "\n"
        )
        value = {"PNG": "shirt.png", "COST": "cost.txt"}.get(value, value)
        if flag == "FLAG":
            extra = [value]
        elif flag == "IMAGE":
            extra = [resolve(value, cwd)]
        elif flag == "--explain-rows":
            extra = ["--explain", f"{flag}={value}"]
        elif flag in PREDICT_PATHS:
            extra = [f"{flag}={resolve(value, cwd)}"]
        else:
            extra = [f"{flag}={value}"]
        args = [*PREDICT_BASE, *extra]
        run_and_check("predict.py", predict.main, args, cwd, capsys)
