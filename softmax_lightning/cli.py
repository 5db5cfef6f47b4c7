"""``scripts/train.py``: the chapter's recipe through ``LightningCLI`` (fit, then test), plus run bookkeeping.

    python scripts/train.py                                   # 10 epochs, batch 256, lr 0.1 (configs/seed.yaml)
    python scripts/train.py --config configs/tuned.yaml       # the tuned recipe
    python scripts/train.py --model.lr 0.05 --trainer.max_epochs 3
    python scripts/train.py --ckpt_path last                  # resume the newest run in its own folder
    python scripts/train.py --print_config

Every run lands in ``<log_dir>/version_N/``: TensorBoard events, ``checkpoints/last.ckpt``, ``config.yaml``,
``metrics.json`` and the figures. Bad input ends with one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler

from softmax_lightning.callbacks import ChapterFigures, use_fast_event_checksums
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError
from softmax_lightning.io import atomic_write_bytes, write_json
from softmax_lightning.model import SoftmaxRegression

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "num_sanity_val_steps": 0,  # the chapter evaluates after each epoch, not before
    "enable_model_summary": False,
    "log_every_n_steps": 50,
}


def find_last_checkpoint(log_dir: str | Path) -> Path:
    """The ``last.ckpt`` of the highest-numbered ``version_N`` run under ``log_dir``."""
    runs = []
    for ckpt in Path(log_dir).glob("version_*/checkpoints/last.ckpt"):
        m = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name)
        if m:
            runs.append((int(m.group(1)), ckpt))
    if not runs:
        raise UserError(f"no checkpoint to resume: no {log_dir}/version_*/checkpoints/last.ckpt; start a run with "
                        f"`python scripts/train.py` first, or pass --ckpt_path PATH")
    return max(runs)[1]


def resolve_checkpoint(ckpt_path: str | None, log_dir: str | Path) -> tuple[Path | None, int | None]:
    """``(checkpoint, run version to write into)`` for ``--ckpt_path`` (``None``, ``last`` or a path)."""
    if ckpt_path is None:
        return None, None
    ckpt = find_last_checkpoint(log_dir) if ckpt_path == "last" else Path(ckpt_path)
    if not ckpt.is_file():
        raise UserError(f"checkpoint {ckpt} not found; pass --ckpt_path last or the path of a .ckpt file")
    m = re.fullmatch(r"version_(\d+)", ckpt.resolve().parent.parent.name)
    same_tree = ckpt.resolve().parent.parent.parent == Path(log_dir).resolve()
    return ckpt, int(m.group(1)) if (m and same_tree) else None


def check_writable(log_dir: str | Path) -> None:
    """Fail early, in one line, if runs cannot be written under ``log_dir``."""
    log_dir = Path(log_dir)
    probe = log_dir / f".write-test-{os.getpid()}"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write runs to log directory {log_dir}: {e.strerror}; pass --log_dir with a "
                        f"writable folder") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file beside the target, then rename: a kill never leaves a partial ``.ckpt``.

    (Lightning's default goes through fsspec, whose temp file lives in the system temp folder; when that is another
    filesystem, the final move is a copy, which a kill can interrupt.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())


class NoProfiler(PassThroughProfiler):
    """Lightning's default "no profiler", minus its cost: Lightning wraps every hook call in ``profile(...)``
    (about 30 per SGD step), and the default builds a generator context manager each time; this returns one shared
    null context. ``--trainer.profiler simple`` (or any other) replaces it as usual."""

    _null = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:  # type: ignore[override]
        return self._null


class EpochCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``state_key`` is built once: Lightning formats it into a label on every hook call
    (a few per SGD step), and it is a function of settings that never change after ``__init__``."""

    @functools.cached_property
    def state_key(self) -> str:  # type: ignore[override]
        return super().state_key


class TrainCLI(LightningCLI):
    """LightningCLI with the project's run layout: TensorBoard run folder, ``last.ckpt``, figures, resume."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume training: 'last' (newest run under --log_dir) or a .ckpt path")
        parser.add_argument("--log_dir", type=str, default="lightning_logs", help="where runs land (version_N/)")
        parser.add_argument("--labels", type=Literal["en", "zh"], default="en", help="class names in figures")
        parser.link_arguments("seed_everything", "data.seed")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        epochs = cfg.trainer.max_epochs
        if epochs is None or epochs < 1:
            raise UserError(f"max_epochs must be >= 1, got {epochs} (--trainer.max_epochs)")
        self.resume_from, version = resolve_checkpoint(cfg.ckpt_path, cfg.log_dir)
        check_writable(cfg.log_dir)
        self.run_version = version

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self.config
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        user_callbacks = trainer_cfg.get("callbacks") or []
        bar = [TQDMProgressBar(refresh_rate=4)] if trainer_cfg.get("enable_progress_bar") is not False else []
        if trainer_cfg.get("profiler") is None:
            kwargs["profiler"] = NoProfiler()
        use_fast_event_checksums()
        kwargs["logger"] = TensorBoardLogger(save_dir=cfg.log_dir, name="", version=self.run_version,
                                             default_hp_metric=False)
        kwargs["plugins"] = [*(trainer_cfg.get("plugins") or []), AtomicCheckpointIO()]
        kwargs["callbacks"] = [
            *user_callbacks,
            # every epoch: the newest epoch=N.ckpt and last.ckpt (Lightning 2.6 writes last.ckpt only in an epoch
            # that also saved a top-k file, hence save_top_k=1 with no monitor; the name leaves out "step", which
            # here is the logged epoch axis, not trainer.global_step)
            EpochCheckpoint(filename="{epoch}", save_last=True, save_top_k=1, every_n_epochs=1,
                            save_on_train_epoch_end=True),
            *bar,
            ChapterFigures(labels=cfg.labels),
        ]
        return super().instantiate_trainer(**kwargs)


def _ddp_checks(trainer, model: SoftmaxRegression) -> dict[str, Any]:
    """Across ranks: are W and b identical, and how many training samples did each rank see?"""
    world = trainer.world_size
    params = trainer.strategy.all_gather(torch.cat([model.W.detach().flatten(), model.b.detach()]))
    seen = trainer.strategy.all_gather(torch.tensor(model.samples_seen, device=model.device))
    if world == 1:
        params, seen = params.unsqueeze(0), seen.reshape(1)
    return {"world_size": world, "ranks_weights_equal": bool((params == params[0]).all()),
            "train_samples_per_rank": [int(s) for s in seen]}


def summarize(metrics: dict[str, Any]) -> str:
    """The short table printed at the end of a run."""
    cols = ("train_loss", "train_acc", "val_acc", "test_acc", "train_seconds")
    head = "  ".join(f"{c:>13}" for c in cols)
    row = "  ".join(f"{metrics[c]:>13.4f}" if isinstance(metrics.get(c), float) else f"{'-':>13}" for c in cols)
    return f"{head}\n{row}"


def run(cli: TrainCLI) -> dict[str, Any]:
    """Fit, test, write ``metrics.json``; return the metrics."""
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=str(cli.resume_from) if cli.resume_from else None)
    train_seconds = time.perf_counter() - t0
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(model, datamodule=dm, verbose=False)
    metrics: dict[str, Any] = {k: v for k, v in fit_metrics.items() if k not in ("step", "epoch")}
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")})
    run_dir = Path(trainer.log_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    metrics.update(epochs=trainer.current_epoch, global_step=trainer.global_step,
                   train_seconds=round(train_seconds, 3), checkpoint=str(ckpt), **_ddp_checks(trainer, model),
                   history=model.history)
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        print(f"\n{summarize(metrics)}\n\nrun folder: {run_dir}  (metrics.json, checkpoints/last.ckpt, "
              f"curves.png, predictions.png, weights.png, confusion.png)\n"
              f"open it in TensorBoard: tensorboard --logdir {Path(cli.config.log_dir)}", flush=True)
    return metrics


def make_cli(args: list[str] | None = None) -> TrainCLI:
    """Parse ``args`` and build model, data module and Trainer exactly as ``scripts/train.py`` does (no fitting)."""
    return TrainCLI(SoftmaxRegression, FashionMNISTDataModule, run=False, args=args, trainer_defaults=TRAINER_DEFAULTS,
                    seed_everything_default=0, save_config_kwargs={"overwrite": True},
                    parser_kwargs={"exit_on_error": False, "default_config_files": []})


def quiet_lightning() -> None:
    """Drop two lines of noise Lightning prints on every run (an advert for litlogger, a torch deprecation)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "litlogger" not in record.getMessage())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(args: list[str] | None = None) -> int:
    """Entry point of ``scripts/train.py``; returns the exit code (2: bad input, message on stderr)."""
    quiet_lightning()
    try:
        try:
            cli = make_cli(args)
        except (ArgumentError, MisconfigurationException, ValueError, TypeError) as e:
            raise UserError(f"bad configuration: {_one_line(e)} (see --help)") from None
        run(cli)
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0
