"""scripts/train.py end to end on the real data: the chapter's recipe, its outputs, and LightningCLI's options."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from softmax_lightning.callbacks import ChapterFigures
from softmax_lightning.cli import RunFolder, make_cli, main
from tests.conftest import ROOT, run_dirs, run_train, train_args

SCALARS = {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2"]


def test_chapter_recipe_meets_d2l_asserts(chapter_run):
    m = chapter_run
    assert m["train_loss"] < 0.5 and m["train_acc"] > 0.7 and m["test_acc"] > 0.7  # d2l's own asserts
    assert abs(m["test_acc"] - 0.8331) <= 0.002  # the chapter's recipe, seed 0
    assert m["epochs"] == 10 and m["global_step"] == 2350  # 235 minibatches (= Lightning batches, SGD steps) x 10
    assert Path(m["checkpoint"]).is_file() and m["train_seconds"] > 0
    assert sorted(p.name for p in Path(m["checkpoint"]).parent.iterdir()) == ["epoch=9.ckpt", "last.ckpt"]
    assert [r["epoch"] for r in m["history"]] == list(range(1, 11))
    assert not (Path(m["run_dir"]) / RunFolder.LOCK).exists()  # released at the end


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
    cfg = (Path(m["run_dir"]) / "config.yaml").read_text()
    assert "lr: 0.2" in cfg and "batch_size: 512" in cfg
    assert m["test_acc"] > 0.6


def _cli(tmp_path, *args: str):
    cli = make_cli(train_args(tmp_path, *args))
    cli.run_folder.release(failed=True)  # nothing was trained: the fresh folder goes again
    return cli


def test_defaults_fill_only_what_the_user_left_unset(tmp_path, data_dir):
    cli = _cli(tmp_path)
    trainer = cli.trainer
    assert isinstance(trainer.logger, TensorBoardLogger) and trainer.max_epochs == 10
    assert trainer.logger.log_dir == str(tmp_path / "lightning_logs" / "version_0")  # Lightning's layout
    assert isinstance(trainer.profiler, PassThroughProfiler)  # Lightning's own default
    assert any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)
    assert any(isinstance(c, ChapterFigures) for c in trainer.callbacks)

    cli = make_cli([f"--trainer.default_root_dir={tmp_path}", f"--data.data_dir={data_dir}",
                    "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'csv'}",
                    "--trainer.profiler=simple", "--trainer.enable_checkpointing=false",
                    "--trainer.callbacks+=TQDMProgressBar", "--trainer.callbacks.refresh_rate=7",
                    "--figures.labels=zh"])
    trainer = cli.trainer
    assert isinstance(trainer.logger, CSVLogger) and trainer.log_dir.startswith(str(tmp_path / "csv"))
    assert isinstance(trainer.profiler, SimpleProfiler)
    assert not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)
    bars = [c for c in trainer.callbacks if isinstance(c, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == 7  # the user's bar, not ours as well
    assert [c.labels for c in trainer.callbacks if isinstance(c, ChapterFigures)] == ["zh"]


def test_a_run_with_a_csv_logger_and_no_checkpointing(tmp_path, data_dir):
    root = tmp_path / "elsewhere"
    m = run_train(root, *SHORT, "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={root}",
                  "--trainer.enable_checkpointing=false")
    run = Path(m["run_dir"])
    assert run.parent.parent == root and (run / "metrics.csv").is_file() and (run / "curves.png").is_file()
    assert m["checkpoint"] is None and not (run / "checkpoints").exists()
    assert not list(Path.cwd().glob("lightning_logs/version_*/metrics.csv"))  # nothing landed in the cwd


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_lightning_cli_subcommands(tmp_path, data_dir, subcommand):
    args = [*SHORT, "--trainer.limit_test_batches=2", "--trainer.limit_predict_batches=2"]
    if subcommand != "fit":
        run_train(tmp_path, *SHORT)  # a checkpoint to start from
        args.append("--ckpt_path=last")
    assert main([subcommand, *train_args(tmp_path, *args)]) == 0
    newest = run_dirs(tmp_path)[-1]
    assert (newest / "config.yaml").is_file()
    if subcommand == "fit":
        assert (newest / "checkpoints" / "last.ckpt").is_file() and (newest / "curves.png").is_file()


def test_profiler_option_is_honoured_in_a_real_run(tmp_path, data_dir):
    run_train(tmp_path, *SHORT, "--trainer.profiler=SimpleProfiler", f"--trainer.profiler.dirpath={tmp_path}",
              "--trainer.profiler.filename=perf")
    report = (tmp_path / "fit-perf.txt").read_text()
    assert "FIT Profiler Report" in report and "run_training_batch" in report


def test_the_progress_bar_counts_the_chapters_235_batches(tmp_path, data_dir):
    out = subprocess.run([sys.executable, "scripts/train.py", f"--trainer.default_root_dir={tmp_path}",
                          f"--data.data_dir={data_dir}", "--trainer.max_epochs=1", "--trainer.limit_val_batches=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "235/235" in out.stdout and "Epoch 0" in out.stdout  # Lightning's bar writes to stdout
    assert json.loads((run_dirs(tmp_path)[-1] / "metrics.json").read_text())["global_step"] == 235
