"""Bad input: one `error:` line on stderr, exit code 2, no traceback, and the user's files untouched."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import softmax_lightning.fashion_mnist as data_mod
from softmax_lightning.cli import main
from tests.conftest import ROOT, one_error_line, snapshot, write_fake_split, write_idx


def _expect_error(capsys, args: list[str], *fragments: str, watch: Path | None = None) -> str:
    before = snapshot(watch) if watch else {}
    assert main([*args, "--trainer.enable_progress_bar=false"]) == 2
    line = one_error_line(capsys.readouterr().err, *fragments)
    if watch:
        assert snapshot(watch) == before  # nothing deleted, repaired or overwritten
    return line


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Pretend Debian's dataset package is absent (and never download)."""
    monkeypatch.setattr(data_mod, "SYSTEM_DIR", tmp_path / "no-debian-package")


def _args(tmp_path: Path, data_dir: Path) -> list[str]:
    return [
        f"--data.data_dir={data_dir}",
        "--data.download=false",
        f"--trainer.default_root_dir={tmp_path / 'logs'}",
        "--trainer.max_epochs=1",
    ]


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_no_data_names_the_three_ways(capsys, tmp_path, no_system_data, setup):
    d = tmp_path / "data"
    if setup == "empty":
        d.mkdir()
    line = _expect_error(
        capsys, _args(tmp_path, d), "not found", "apt-get install dataset-fashion-mnist", "torchvision downloads"
    )
    assert str(d) in line


def test_data_dir_that_is_a_file(capsys, tmp_path, no_system_data):
    f = tmp_path / "data"
    f.write_text("my notes")
    _expect_error(capsys, _args(tmp_path, f), "is not a folder", watch=tmp_path)
    assert f.read_text() == "my notes"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder; the not-a-folder case covers this path")
def test_unreadable_data_dir(capsys, tmp_path, no_system_data):
    d = tmp_path / "data"
    d.mkdir()
    d.chmod(0)
    try:
        _expect_error(capsys, _args(tmp_path, d), "not readable")
    finally:
        d.chmod(0o755)


def _corrupt(raw: Path, case: str) -> str:
    """Damage one file of a valid fake split; return the damaged file's name."""
    img, lbl = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    rng = np.random.default_rng(1)
    if case == "truncated":
        img.write_bytes(img.read_bytes()[:-100])
        return img.name
    if case == "magic":
        write_idx(img, rng.integers(0, 256, (64, 28, 28)), magic=0x0A0B0C03)
        return img.name
    if case == "dims":
        write_idx(img, rng.integers(0, 256, (64, 27, 27)))
        return img.name
    if case == "counts":
        write_idx(lbl, rng.integers(0, 10, 63))
        return img.name
    if case == "labels":
        write_idx(lbl, np.r_[rng.integers(0, 10, 63), 12])
        return lbl.name
    if case == "label 10":  # the first label past the ten classes 0-9
        write_idx(lbl, np.r_[rng.integers(0, 10, 63), 10])
        return lbl.name
    raise ValueError(case)


@pytest.mark.parametrize(
    "case,text",
    [
        ("truncated", "truncated"),
        ("magic", "magic number"),
        ("dims", "shape (27, 27)"),
        ("counts", "63 labels"),
        ("labels", "label 12 at index 63"),
        ("label 10", "label 10 at index 63"),
    ],
)
def test_damaged_idx_files(capsys, tmp_path, no_system_data, case, text):
    d = tmp_path / "data"
    raw = write_fake_split(d / "FashionMNIST" / "raw")
    name = _corrupt(raw, case)
    line = _expect_error(capsys, _args(tmp_path, d), text, name, watch=d)
    assert "replace" in line and "delete" not in line  # says how to fix it, never "delete your data"


def test_gz_that_is_not_gzip(capsys, tmp_path, no_system_data):
    d = tmp_path / "data"
    raw = d / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{n}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(8)) if "labels" in n else b"oops")
    _expect_error(capsys, _args(tmp_path, d), "not a valid gzip file", ".gz", watch=d)
    assert not any(p.suffix != ".gz" for p in raw.iterdir())  # no half-unpacked files left behind


def test_corrupt_debian_package_file(capsys, tmp_path, monkeypatch):
    system = tmp_path / "debian"
    system.mkdir()
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (system / f"{n}.gz").write_bytes(b"not gzip")
    monkeypatch.setattr(data_mod, "SYSTEM_DIR", system)
    _expect_error(capsys, _args(tmp_path, tmp_path / "data"), "reinstall", "dataset-fashion-mnist", watch=system)


@pytest.mark.parametrize(
    "arg,text",
    [
        ("--model.lr=0", "lr must be"),
        ("--model.lr=-0.5", "lr must be"),
        ("--model.lr=inf", "lr"),
        ("--model.lr=nan", "lr"),
        ("--data.batch_size=0", "batch_size must be >= 1"),
        ("--trainer.max_epochs=0", "max_epochs must be >= 1"),
        ("--model.init_std=-1", "init_std must be"),
        ("--data.val_size=-1", "val_size must be >= 0"),
        ("--data.val_size=60000", "val_size must be smaller"),
        ("--trainer.accelerator=warp", "invalid accelerator"),
        ("--trainer.accelerator=gpu", "gpu"),
        ("--config=/nonexistent/c.yaml", "No such file"),
        ("--ckpt_path=last", "no checkpoint found"),
        ("--trainer.default_root_dir=/dev/null/runs", "cannot create a run folder"),
    ],
)
def test_bad_hyper_parameters_are_rejected_before_training(capsys, tmp_path, data_dir, arg, text):
    args = [
        f"--data.data_dir={data_dir}",
        f"--trainer.default_root_dir={tmp_path / 'logs'}",
        "--trainer.max_epochs=1",
        arg,
    ]
    _expect_error(capsys, args, text)
    assert not list((tmp_path / "logs").glob("lightning_logs/version_*"))  # a failed start leaves no run folder


def test_config_that_is_not_yaml(capsys, tmp_path, data_dir):
    bad = tmp_path / "c.yaml"
    bad.write_text("model: [unclosed\n  - : :")
    _expect_error(capsys, [f"--config={bad}", f"--data.data_dir={data_dir}"], "parsing", watch=tmp_path)


def test_non_finite_loss_stops_with_epoch_and_step(capsys, tmp_path, data_dir):
    line = _expect_error(
        capsys,
        [
            f"--data.data_dir={data_dir}",
            f"--trainer.default_root_dir={tmp_path}",
            "--model.softmax=naive",
            "--model.lr=100",
            "--trainer.max_epochs=2",
        ],
        "nan",
        "epoch 0, step 1",
    )
    assert "--model.softmax stable" in line


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/train.py", "--model.lr=-1"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: lr must be")


@pytest.mark.parametrize(
    "args,text",
    [
        (["--out", "/dev/null/b.json"], "cannot write /dev/null/b.json"),
        (["--device", "cuda"], "sees no CUDA GPU"),
    ],
)
def test_benchmark_bad_input_is_one_line(tmp_path, args, text):
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    out = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--skip-d2l", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0]
