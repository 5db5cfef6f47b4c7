"""The chapter's recipe around LightningCLI's ``fit``: then the test split, ``metrics.json`` and a short summary.

``scripts/train.py`` with no subcommand runs ``fit`` and then ``finish`` (LightningCLI's ``after_fit`` hook);
``validate`` and ``test`` keep what they computed with ``keep_results``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from softmax_lightning.callbacks import SERIES, ChapterFigures
from softmax_lightning.io import write_json
from softmax_lightning.runs import FIGURES


def run_folder(trainer: L.Trainer) -> Path | None:
    """The folder the trainer's logger writes (none without a logger, or under ``fast_dev_run``)."""
    return Path(trainer.log_dir) if trainer.loggers and not trainer.fast_dev_run else None


def finish(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """After fitting: test, write ``metrics.json`` into the run folder, print the summary; return the metrics."""
    trainer.test(model, datamodule=datamodule, verbose=False)
    figs = next(c for c in trainer.callbacks if isinstance(c, ChapterFigures))
    history = figs.history
    last = history[-1] if history else {}
    metrics: dict[str, Any] = {k: last[k] for k in SERIES if k in last}
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")})
    ckpt = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    val_size = getattr(datamodule, "hparams", {}).get("val_size", 0)
    metrics.update(
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        world_size=trainer.world_size,
        validated_on="test split" if figs.val_name == "test" else f"{val_size} held-out images",
        train_seconds=round(sum(row.get("seconds", 0.0) for row in history), 3),
        checkpoint=ckpt or None,
        history=history,
    )
    run = run_folder(trainer)  # (every rank asks: log_dir broadcasts)
    run = here(run) if run is not None else None
    if not trainer.is_global_zero:
        return metrics
    if run is not None:
        write_json(run / "metrics.json", metrics)
        files = [f for f in ("metrics.json", "checkpoints/last.ckpt", *FIGURES) if (run / f).is_file()]
        where = f"run folder: {run}  ({', '.join(files)})"
        if any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
            where += f"\nsee it in TensorBoard: {tensorboard_command(run.parent)}"
    else:
        where = "no logger, so no run folder: nothing was written besides checkpoints (if enabled)"
    print(f"\n{summarize(metrics, figs.val_name)}\n\n{where}", flush=True)
    return metrics


def keep_results(trainer: L.Trainer, fn: str) -> None:
    """After ``validate`` / ``test`` / ``predict``: what they computed in ``metrics.json`` beside their
    ``config.yaml`` (``<run>/<fn>/`` when evaluating a run's checkpoint), and say where."""
    results = run_folder(trainer)
    if results is None or not trainer.is_global_zero:
        return
    if fn != "predict":
        write_json(results / "metrics.json", {k: float(v) for k, v in trainer.callback_metrics.items()})
    print(f"{fn} results: {here(results)}", flush=True)


def here(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (as a user typed it), else as it is."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def command(*args: str) -> str:
    """A command line with this interpreter (``.venv/bin/python`` from the repository), so that it works as printed
    in a new shell, with no venv to activate."""
    return shlex.join([str(here(Path(sys.executable))), *map(str, args)])


def tensorboard_command(logdir: Path) -> str:
    """The command that opens ``logdir`` in TensorBoard: ``.venv/bin/python -m tensorboard.main --logdir ...``."""
    return command("-m", "tensorboard.main", "--logdir", here(logdir))


def summarize(metrics: dict[str, Any], val_name: str = "val") -> str:
    """The short table printed at the end of a run (validation on the test split is the test column: not repeated)."""
    cols = ("train_loss", "train_acc", *(("val_acc",) if val_name == "val" else ()), "test_acc", "train_seconds")
    head = "  ".join(f"{c:>13}" for c in cols)
    row = "  ".join(f"{metrics[c]:>13.4f}" if isinstance(metrics.get(c), float) else f"{'-':>13}" for c in cols)
    note = "" if val_name == "val" else "\n(validated on the test split after every epoch, as the chapter does)"
    return f"{head}\n{row}{note}"
