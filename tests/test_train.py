"""scripts/train.py end to end on the real data: the chapter's recipe, its outputs, and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, run_train

SCALARS = {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}


def test_chapter_recipe_meets_d2l_asserts(chapter_run):
    m = chapter_run
    assert m["train_loss"] < 0.5 and m["train_acc"] > 0.7 and m["test_acc"] > 0.7  # d2l's own asserts
    assert m["test_acc"] >= 0.80
    assert m["epochs"] == 10 and m["global_step"] == 2350
    assert Path(m["checkpoint"]).is_file() and m["train_seconds"] > 0
    assert sorted(p.name for p in Path(m["checkpoint"]).parent.iterdir()) == ["epoch=9.ckpt", "last.ckpt"]
    assert [r["epoch"] for r in m["history"]] == list(range(1, 11))


def test_tensorboard_has_the_six_scalars_per_epoch(chapter_run):
    ea = EventAccumulator(chapter_run["run_dir"], size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert SCALARS <= tags
    for tag in SCALARS - {"test_loss", "test_acc"}:
        assert [e.step for e in ea.Scalars(tag)] == list(range(1, 11))  # x-axis: epoch
    assert len(ea.Scalars("test_acc")) == 1
    final_val = ea.Scalars("val_acc")[-1].value
    assert abs(final_val - chapter_run["val_acc"]) < 1e-6


def test_config_file_reproduces_the_default(tmp_path, chapter_run):
    out = subprocess.run([sys.executable, "scripts/train.py", "--config", "configs/seed.yaml", "--print_config"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "lr: 0.1" in out.stdout and "batch_size: 256" in out.stdout and "max_epochs: 10" in out.stdout


def test_cli_overrides_apply(tmp_path, data_dir):
    m = run_train(tmp_path, "--trainer.max_epochs=1", "--data.batch_size=512", "--model.lr=0.2")
    assert m["epochs"] == 1 and m["global_step"] == 118  # ceil(60000 / 512)
    cfg = (tmp_path / "version_0" / "config.yaml").read_text()
    assert "lr: 0.2" in cfg and "batch_size: 512" in cfg
    assert json.loads((tmp_path / "version_0" / "metrics.json").read_text())["test_acc"] > 0.6


def test_profiler_option_still_works(tmp_path, data_dir):
    """The default no-op profiler is replaced by whatever --trainer.profiler names."""
    from lightning.pytorch.profilers import SimpleProfiler

    from softmax_lightning.cli import NoProfiler, make_cli

    base = [f"--log_dir={tmp_path}", f"--data.data_dir={data_dir}"]
    assert isinstance(make_cli(base).trainer.profiler, NoProfiler)
    assert isinstance(make_cli([*base, "--trainer.profiler=simple"]).trainer.profiler, SimpleProfiler)
