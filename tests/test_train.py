"""scripts/train.py end to end on the real data: the chapter's recipe, its outputs, and LightningCLI's options."""

import fcntl
import json
import os
import pty
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from softmax_lightning.callbacks import ChapterFigures, EpochLog
from softmax_lightning.checkpoint import AtomicCheckpointIO
from softmax_lightning.cli import main, make_cli
from softmax_lightning.runs import RunFolder
from tests.conftest import ROOT, run_dirs, run_train, train_args

SCALARS = {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2"]


def test_chapter_recipe_meets_d2l_asserts(chapter_run):
    m = chapter_run
    assert m["train_loss"] < 0.5 and m["train_acc"] > 0.7 and m["test_acc"] > 0.7  # d2l's own asserts
    assert abs(m["test_acc"] - 0.8332) <= 0.005  # the chapter's recipe, seed 0 (a margin for other threads and CPUs)
    assert m["epochs"] == 10 and m["global_step"] == 2350  # 235 minibatches (= Lightning batches, SGD steps) x 10
    assert Path(m["checkpoint"]).is_file() and m["train_seconds"] > 0
    assert sorted(p.name for p in Path(m["checkpoint"]).parent.iterdir()) == ["epoch=9.ckpt", "last.ckpt"]
    assert [r["epoch"] for r in m["history"]] == list(range(1, 11))
    assert not (Path(m["run_dir"]) / RunFolder.LOCK).exists()  # released at the end


def test_tensorboard_scalars_share_lightnings_global_step_axis(chapter_run):
    """Fit and test scalars on one x-axis, Lightning's global step: each epoch's at its last step (235 per epoch),
    the test's after the last one. (curves.png keeps the chapter's epoch axis.)"""
    ea = EventAccumulator(chapter_run["run_dir"], size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert SCALARS <= tags and "step" not in tags
    for tag in SCALARS - {"test_loss", "test_acc"}:
        assert [e.step for e in ea.Scalars(tag)] == [235 * k - 1 for k in range(1, 11)], tag
    for tag in ("test_loss", "test_acc"):
        assert [e.step for e in ea.Scalars(tag)] == [2350]
    assert [e.value for e in ea.Scalars("epoch")][-1] == 10  # Lightning's own epoch chart, on the same axis
    final_val = ea.Scalars("val_acc")[-1].value
    assert abs(final_val - chapter_run["val_acc"]) < 1e-6


def _printed_config(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "scripts/train.py", *args, "--print_config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_config_files_take_effect():
    """configs/seed.yaml is the chapter's recipe, the defaults; configs/tuned.yaml changes what it says it changes."""
    default, seed, tuned = (
        _printed_config(),
        _printed_config("--config", "configs/seed.yaml"),
        _printed_config("--config", "configs/tuned.yaml"),
    )
    assert seed == default
    assert (default["model"]["lr"], default["data"]["batch_size"], default["trainer"]["max_epochs"]) == (0.1, 256, 10)
    assert {k: tuned["model"][k] for k in ("lr", "momentum", "nesterov", "lr_schedule")} == {
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": True,
        "lr_schedule": "cosine",
    }
    assert (tuned["data"]["val_size"], tuned["data"]["standardize"], tuned["trainer"]["max_epochs"]) == (5000, True, 50)


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

    cli = make_cli(
        [
            f"--trainer.default_root_dir={tmp_path}",
            f"--data.data_dir={data_dir}",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / 'csv'}",
            "--trainer.profiler=simple",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks+=TQDMProgressBar",
            "--trainer.callbacks.refresh_rate=7",
            "--figures.labels=zh",
        ]
    )
    trainer = cli.trainer
    assert isinstance(trainer.logger, CSVLogger) and trainer.log_dir.startswith(str(tmp_path / "csv"))
    assert isinstance(trainer.profiler, SimpleProfiler)
    assert not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)
    bars = [c for c in trainer.callbacks if isinstance(c, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == 7  # the user's bar, not ours as well
    assert [c.labels for c in trainer.callbacks if isinstance(c, ChapterFigures)] == ["zh"]


def test_a_users_plugins_keep_the_atomic_checkpoint_writer(tmp_path, data_dir):
    """A plugin the user passes (here a cluster environment) is added to ours, not put in place of it; a checkpoint
    writer of their own replaces ours."""
    trainer = _cli(tmp_path, "--trainer.plugins=lightning.pytorch.plugins.precision.DoublePrecision").trainer
    assert type(trainer.precision_plugin).__name__ == "DoublePrecision"  # the user's plugin is there
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # and so is ours
    own = "lightning.fabric.plugins.io.TorchCheckpointIO"
    trainer = _cli(tmp_path, f"--trainer.plugins={own}").trainer
    assert type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"
    strategy = ["--trainer.strategy=lightning.pytorch.strategies.SingleDeviceStrategy", "--trainer.strategy.device=cpu"]
    trainer = _cli(tmp_path, *strategy).trainer  # a strategy object of the user's: it gets ours, no conflict
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_run_with_a_csv_logger_and_no_checkpointing(tmp_path, data_dir):
    root = tmp_path / "elsewhere"
    m = run_train(
        root,
        *SHORT,
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={root}",
        "--trainer.enable_checkpointing=false",
    )
    run = Path(m["run_dir"])
    assert run.parent.parent == root and (run / "metrics.csv").is_file() and (run / "curves.png").is_file()
    assert m["checkpoint"] is None and not (run / "checkpoints").exists()
    assert not list(Path.cwd().glob("lightning_logs/version_*/metrics.csv"))  # nothing landed in the cwd


@pytest.fixture(scope="module")
def standardized_run(tmp_path_factory, data_dir) -> dict:
    """A short run whose settings matter for evaluation: standardised inputs, a 1000-image holdout."""
    return run_train(
        tmp_path_factory.mktemp("standardized"),
        *SHORT,
        "--trainer.limit_train_batches=30",
        "--data.standardize=true",
        "--data.val_size=1000",
        "--model.lr=0.2",
    )


def test_fit_subcommand_is_lightnings_fit(tmp_path, data_dir):
    assert main(["fit", *train_args(tmp_path, *SHORT, "--model.lr=0.3")]) == 0
    run = run_dirs(tmp_path)[-1]
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "curves.png").is_file()
    assert not (run / "metrics.json").exists()  # fit only: the recipe's test and metrics.json are not run
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["lr"] == 0.3


@pytest.mark.parametrize("subcommand,key", [("test", "test_acc"), ("validate", "val_acc")])
def test_evaluating_a_run_reproduces_its_numbers_in_its_own_folder(tmp_path, standardized_run, subcommand, key):
    """``test``/``validate --ckpt_path RUN`` use the run's own settings (here standardised inputs and the holdout),
    give the numbers the run recorded, and write into ``RUN/<subcommand>/``: repeated, they add no run folder."""
    run = Path(standardized_run["run_dir"])
    root = run.parent.parent
    before = run_dirs(root)
    for _ in range(2):
        assert main([subcommand, *train_args(root, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")]) == 0
    assert run_dirs(root) == before
    results = json.loads((run / subcommand / "metrics.json").read_text())
    assert abs(results[key] - standardized_run[key]) < 1e-6
    cfg = yaml.safe_load((run / subcommand / "config.yaml").read_text())
    assert cfg["data"]["standardize"] is True and cfg["data"]["val_size"] == 1000 and cfg["model"]["lr"] == 0.2
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["standardize"] is True  # the run's own: kept


def test_a_checkpoint_outside_its_run_folder_brings_its_own_settings(tmp_path, standardized_run):
    """A checkpoint copied away from its run folder has no config.yaml beside it: its own settings (standardised
    inputs, the 1000-image holdout) still apply, so evaluating it gives the numbers the run recorded (the trainer's
    settings are the user's: the run validated on 2 batches)."""
    import shutil

    ckpt = shutil.copy(Path(standardized_run["run_dir"]) / "checkpoints" / "last.ckpt", tmp_path / "model.ckpt")
    for subcommand, key in (("test", "test_acc"), ("validate", "val_acc")):
        args = train_args(tmp_path / "eval", f"--ckpt_path={ckpt}", "--trainer.limit_val_batches=2")
        assert main([subcommand, *args]) == 0
        results = json.loads((run_dirs(tmp_path / "eval")[-1] / "metrics.json").read_text())
        assert abs(results[key] - standardized_run[key]) < 1e-6, subcommand


def test_predict_py_standardises_its_inputs_as_the_run_did(tmp_path, standardized_run, capsys):
    """predict.py on a run trained on standardised inputs applies the training split's statistics (saved in the
    checkpoint): its logits are the model's on the standardised test images, and its predictions are right as
    often as the run's test accuracy says."""
    from softmax_lightning import predict
    from softmax_lightning.data import FashionMNISTDataModule

    ckpt = standardized_run["checkpoint"]
    assert predict.main(["--ckpt_path", ckpt, "--n", "1000", "--json", "--out", str(tmp_path / "p.png")]) == 0
    records = json.loads(capsys.readouterr().out)["predictions"]
    dm = FashionMNISTDataModule(data_dir=str(ROOT / "data"), val_size=1000, standardize=True)
    dm.setup()  # the run's data settings: the statistics of its training split, and the test split standardised
    model, _ = predict.load_checkpoint(ckpt)
    with torch.no_grad():
        logits = model.logits(dm.test_set.X[:1000])
    got = torch.tensor([list(r["logits"].values()) for r in records])
    torch.testing.assert_close(got, logits, rtol=0, atol=1e-3)  # the JSON rounds to 4 decimals; raw pixels: off by ~10
    right = sum(r["predicted"] == r["true"] for r in records) / len(records)
    assert abs(right - standardized_run["test_acc"]) < 0.05 and right > 0.6


def test_predict_subcommand_writes_into_the_runs_folder(tmp_path, standardized_run):
    run = Path(standardized_run["run_dir"])
    before = run_dirs(run.parent.parent)
    assert (
        main(["predict", *train_args(run.parent.parent, "--ckpt_path=last", "--trainer.limit_predict_batches=2")]) == 0
    )
    assert run_dirs(run.parent.parent) == before and (run / "predict" / "config.yaml").is_file()


def test_profiler_option_is_honoured_in_a_real_run(tmp_path, data_dir):
    run_train(
        tmp_path,
        *SHORT,
        "--trainer.profiler=SimpleProfiler",
        f"--trainer.profiler.dirpath={tmp_path}",
        "--trainer.profiler.filename=perf",
    )
    report = (tmp_path / "fit-perf.txt").read_text()
    assert "FIT Profiler Report" in report and "run_training_batch" in report


def test_at_a_terminal_the_progress_bar_counts_the_chapters_235_batches(tmp_path, data_dir):
    """In a terminal (a pseudo-terminal here), Lightning's TQDM bar."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen(
        [
            sys.executable,
            "scripts/train.py",
            f"--trainer.default_root_dir={tmp_path}",
            f"--data.data_dir={data_dir}",
            "--trainer.max_epochs=1",
            "--trainer.limit_val_batches=2",
        ],
        cwd=ROOT,
        stdout=secondary,
        stderr=subprocess.PIPE,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=300)
    os.close(primary)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    assert "235/235" in out and "Epoch 0" in out and "\r" in out  # Lightning's bar, redrawn in place
    assert json.loads((run_dirs(tmp_path)[-1] / "metrics.json").read_text())["global_step"] == 235


def test_into_a_file_training_logs_one_line_per_epoch(tmp_path, data_dir):
    """``python scripts/train.py > train.log 2>&1``: plain lines a person can read, the summary at the end."""
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        code = subprocess.run(
            [
                sys.executable,
                "scripts/train.py",
                f"--trainer.default_root_dir={tmp_path}",
                f"--data.data_dir={data_dir}",
                "--trainer.max_epochs=3",
                "--trainer.limit_train_batches=40",
                "--trainer.limit_val_batches=4",
            ],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=300,
        ).returncode
    text = log.read_text()
    assert code == 0, text[-2000:]
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text and len(lines) <= 20, text
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    # validation runs on the test split (the chapter's "test acc"), and the lines say so, as the summary does
    assert all(k in epochs[0] for k in ("train_loss", "train_acc", "test_acc", " s")) and "val_acc" not in text
    summary = lines.index(next(line for line in lines if "test_acc" in line and "train_seconds" in line))
    assert summary > lines.index(epochs[-1]) and "run folder:" in text.split(lines[summary])[1]


def test_the_tensorboard_hint_works_as_printed(tmp_path, data_dir, capsys):
    """The closing hint names this interpreter, so it works in a new shell without activating anything."""
    run_train(tmp_path, *SHORT)
    hint = next(line for line in capsys.readouterr().out.splitlines() if "TensorBoard:" in line)
    command = shlex.split(hint.split("TensorBoard: ", 1)[1])
    assert command[1:4] == ["-m", "tensorboard.main", "--logdir"]
    out = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--logdir" in out.stdout, out.stderr[-1000:]


@pytest.mark.parametrize("tty,bar", [(True, TQDMProgressBar), (False, EpochLog)])
def test_terminal_and_log_progress_bars_are_chosen_by_stdout(tmp_path, data_dir, monkeypatch, tty, bar):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    cli = make_cli([f"--trainer.default_root_dir={tmp_path}", f"--data.data_dir={data_dir}"])
    cli.run_folder.release(failed=True)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, ProgressBar)]
    assert len(bars) == 1 and type(bars[0]) is bar
