"""``scripts/train.py``: the chapter's recipe through ``LightningCLI``, and LightningCLI's own subcommands.

    python scripts/train.py                                   # the recipe: fit 10 epochs, test, write metrics.json
    python scripts/train.py --config configs/tuned.yaml       # the tuned recipe
    python scripts/train.py --model.lr 0.05 --trainer.max_epochs 3
    python scripts/train.py --ckpt_path last                  # resume the newest run, in its own folder
    python scripts/train.py fit --trainer.max_epochs 3        # LightningCLI subcommands: fit, validate, test, predict
    python scripts/train.py test --ckpt_path last

Runs land in Lightning's own layout, ``<default_root_dir>/lightning_logs/version_N/``: TensorBoard events,
``checkpoints/last.ckpt``, ``config.yaml``, the figures and (for the recipe) ``metrics.json``. Our defaults (a
TensorBoard logger, a checkpoint every epoch with ``last.ckpt``, a progress bar, the chapter's figures) fill only
what the user's ``--trainer.*`` options leave unset. Bad input, a full disk and SIGTERM / Ctrl-C each end with one
line on stderr and a non-zero exit code (2, 2, 143 / 130), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

try:
    import fcntl  # POSIX advisory locks
except ImportError:  # Windows
    fcntl = None

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from softmax_lightning.callbacks import SERIES, ChapterFigures
from softmax_lightning.checkpoint import (LOGS, AtomicCheckpointIO, finished, newest_checkpoint, read_checkpoint,
                                          run_folder_of, run_versions)
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import read_small_text, write_error, write_json
from softmax_lightning.model import SoftmaxRegression

SUBCOMMANDS = ("fit", "validate", "test", "predict")
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "num_sanity_val_steps": 0,  # the chapter evaluates after each epoch, not before
    "enable_model_summary": False,
}
PROGRESS_REFRESH = 50  # batches between progress-bar redraws (~5 per epoch): each costs ~2 ms, a step ~2 ms
FIGURES = ("curves.png", "predictions.png", "weights.png", "confusion.png")
OUTPUTS = (*SERIES, "test_loss", "test_acc")  # what a complete metrics.json holds
UNCHECKED_ON_RESUME = {"data_dir", "num_workers", "download"}  # where the data is and how it is read: free to change
MAX_CONFIG_VALUES = 100_000  # a YAML config may expand (through aliases) to at most this many values


class NothingToDo(Exception):
    """The run asked for is already complete: say so, change nothing, exit 0."""


class Stopped(BaseException):
    """SIGTERM or SIGINT (Ctrl-C) arrived; raised where the program was, so that cleanup still runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGTERM (``timeout``, ``docker stop``, schedulers) and SIGINT into ``Stopped`` while the block runs."""
    def handler(signum: int, frame) -> None:
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------------- run folders
class RunFolder:
    """The run folder this process writes: picked atomically, locked while in use, removed if a fresh start fails.

    The lock is an advisory ``flock`` on ``<run>/.lock`` (which holds the writer's PID, for the message): the kernel
    drops it when the process ends, however it ends, so a lock is never stale. Under DDP only rank 0 (the process
    that writes files) picks and locks the folder. (Where ``fcntl`` is missing, e.g. Windows, folders are not locked.)
    """

    LOCK = ".lock"
    DEBRIS = {LOCK, "config.yaml", "hparams.yaml"}  # what a start writes before it trains anything

    def __init__(self) -> None:
        self.path: Path | None = None
        self.created = False  # made by this process (so it may be removed again)
        self._lock_file = None  # the open, flock-ed lock file while this process holds the folder

    @staticmethod
    def _try_lock(f) -> bool:
        """Take an exclusive ``flock`` on the open file ``f`` without waiting; whether it was free."""
        if fcntl is None:
            return True
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    @classmethod
    def check_free(cls, run: Path) -> None:
        """Refuse, in one line, a run folder that a live process is writing (read-only: takes nothing)."""
        try:
            with open(run / cls.LOCK, "a+") if (run / cls.LOCK).is_file() else contextlib.nullcontext() as f:
                if f is None or cls._try_lock(f):
                    return  # no lock file, or nobody holds it (closing the file drops our probe)
                f.seek(0)
                pid = f.read().strip() or "?"
        except OSError:
            return
        raise UserError(f"run folder {run} is in use by process {pid} (it holds {run / cls.LOCK}); wait for that "
                        f"run to end or stop it, then resume")

    def create(self, logs: Path) -> int:
        """Make the next ``version_N`` under ``logs`` exclusively (two processes never get the same one); lock it."""
        try:
            logs.mkdir(parents=True, exist_ok=True)
            n = max(run_versions(logs.parent), default=-1) + 1
            while True:
                try:
                    (logs / f"version_{n}").mkdir()
                    break
                except FileExistsError:  # another process took it first
                    n += 1
        except OSError as e:
            raise UserError(f"cannot create a run folder in {logs}: {e.strerror}; pass "
                            f"--trainer.default_root_dir with a writable folder") from None
        self.path, self.created = logs / f"version_{n}", True
        self.lock()
        return n

    def use(self, run: Path) -> None:
        """Write into an existing run folder (a resumed run), after locking it."""
        self.path = run
        self.lock()

    def lock(self) -> None:
        lock = self.path / self.LOCK
        try:
            f = open(lock, "a+")
        except OSError as e:
            raise write_error(lock, e) from None
        if not self._try_lock(f):
            f.close()
            self.check_free(self.path)  # says who holds it
            raise UserError(f"run folder {self.path} is being taken by another process; try again")
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def has_checkpoint(self) -> bool:
        return self.path is not None and (self.path / "checkpoints" / "last.ckpt").is_file()

    def release(self, failed: bool) -> None:
        """Unlock; after a failed fresh start that trained nothing, remove the folder: it holds nothing to keep."""
        if self._lock_file is not None:
            (self.path / self.LOCK).unlink(missing_ok=True)
            self._lock_file.close()  # drops the flock
            self._lock_file = None
        if failed and self.created and self.path.is_dir():
            kept = [p for p in self.path.rglob("*") if p.is_file() and p.name not in self.DEBRIS
                    and not p.name.startswith("events.out.tfevents")]
            if not kept:  # no checkpoint, figure or metrics: a start that failed before its first epoch ended
                shutil.rmtree(self.path, ignore_errors=True)


def complete_outputs(run: Path) -> bool:
    """Whether a run folder holds a complete ``metrics.json`` and all four figures."""
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and all(k in metrics for k in OUTPUTS) and all((run / f).is_file()
                                                                                    for f in FIGURES)


@dataclass
class Resume:
    """The checkpoint a run starts from, already loaded safely and checked."""

    path: Path
    checkpoint: dict[str, Any]
    run: Path | None  # the run folder it belongs to, if it sits in Lightning's layout


def changed_settings(ckpt: dict[str, Any], settings: dict[str, dict]) -> list[str]:
    """``model.*`` / ``data.*`` settings (``{"model": {...}, "data": {...}}``) that differ from the checkpoint's."""
    diffs = []
    for group, saved in (("model", ckpt.get("hyper_parameters") or {}), ("data", ckpt.get("datamodule_hyper_parameters")
                                                                          or {})):
        for key, now in settings[group].items():
            if key in saved and key not in UNCHECKED_ON_RESUME and saved[key] != now:
                diffs.append(f"{group}.{key} is {saved[key]!r} in the checkpoint but {now!r} now")
    return diffs


class RunConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the run folder, written only where there is a run folder (a logger, and no
    ``fast_dev_run``): never into the working directory over a file of the user's."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.loggers and not trainer.fast_dev_run:
            super().setup(trainer, pl_module, stage)


# ---------------------------------------------------------------------------------------------------- the CLI
class TrainCLI(LightningCLI):
    """``LightningCLI`` with the project's defaults, run folders and checks.

    Args:
        recipe: parse the recipe's options (no subcommand; ``--ckpt_path``) instead of the subcommands.
        run_folder: records the run folder this process writes, for cleanup by the caller.
    """

    def __init__(self, *args: Any, recipe: bool, run_folder: RunFolder, **kwargs: Any) -> None:
        self.recipe, self.run_folder, self.resume = recipe, run_folder, None
        self.given_args = kwargs.get("args")  # what the user typed, to tell their settings from defaults
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        if self.recipe:  # the subcommands get Trainer.fit's own --ckpt_path
            parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                                help="resume training: 'last' (the newest run under --trainer.default_root_dir) or a "
                                     ".ckpt path; the run continues in the checkpoint's own run folder")
        parser.add_lightning_class_args(ChapterFigures, "figures")  # --figures.labels zh, --figures.n_images 8
        parser.link_arguments("seed_everything", "data.seed")

    def _cfg(self):
        """This run's configuration (the subcommand's, if any)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Checks that need no objects yet: limits, and the checkpoint to start from (loaded safely, compared)."""
        cfg = self._cfg()
        tcfg = cfg.trainer
        if (tcfg.max_steps is None or tcfg.max_steps < 0) and (tcfg.max_epochs is None or tcfg.max_epochs < 1):
            raise UserError(f"max_epochs must be >= 1, got {tcfg.max_epochs} (--trainer.max_epochs)")
        if self.subcommand:
            if cfg.get("weights_only") is False:
                raise UserError("--weights_only false would let a checkpoint run code while it loads; this project "
                                "loads checkpoints with weights_only=True only: drop the option")
            cfg.weights_only = True
        if not cfg.get("ckpt_path"):
            return
        root = Path(tcfg.default_root_dir or ".")
        path = newest_checkpoint(root) if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
        checkpoint = read_checkpoint(path)
        if self.subcommand and cfg.ckpt_path == "last":  # LightningCLI reads a path's model settings, not "last"'s
            saved = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
            self.config = self.parser.parse_object({self.subcommand: {"model": saved}}, self.config)
            cfg = self._cfg()
        shape, wanted = tuple(checkpoint["state_dict"]["W"].shape), (cfg.model.num_inputs, cfg.model.num_outputs)
        if shape != wanted:
            raise UserError(f"checkpoint {path} holds W of shape {shape}, but this run's model has {wanted} "
                            f"(--model.num_inputs, --model.num_outputs); pass --ckpt_path with a checkpoint of this "
                            f"model")
        if diffs := changed_settings(checkpoint, self._settings_to_compare(cfg)):
            raise UserError(f"cannot use {path} with changed settings: {'; '.join(diffs)}. A run folder must "
                            f"record what it trained with: drop those options to resume, or start a new run "
                            f"without --ckpt_path")
        cfg.ckpt_path = str(path)
        self.resume = Resume(path, checkpoint, run_folder_of(path))
        if self.subcommand not in (None, "fit") or self.resume.run is None:
            return
        if rank_zero_only.rank == 0:  # the lock is rank 0's
            RunFolder.check_free(self.resume.run)
        if self.recipe and finished(checkpoint, tcfg.max_epochs, tcfg.max_steps) and complete_outputs(self.resume.run):
            raise NothingToDo(f"run {self.resume.run} is complete ({checkpoint.get('global_step')} steps, "
                              f"{tcfg.max_epochs} epochs asked): nothing left to train and every file is as it was. "
                              f"To train longer, resume with a larger --trainer.max_epochs")  # on every rank

    def _settings_to_compare(self, cfg) -> dict[str, dict]:
        """The ``model`` / ``data`` settings a checkpoint must agree with. With a subcommand, LightningCLI takes the
        model's settings from the checkpoint itself, so only those the user set explicitly are compared."""
        model = dict(cfg.model.items())
        if self.subcommand:  # what parsing the user's arguments gives, where it differs from parsing none
            given = self.parser.parse_args(self.given_args)[self.subcommand].model
            default = self.parser.parse_args([self.subcommand])[self.subcommand].model
            model = {k: v for k, v in given.items() if default.get(k) != v}
        return {"model": model, "data": dict(cfg.data.items())}

    def instantiate_trainer(self, **kwargs: Any):
        """The user's Trainer options, with our defaults only where they left a choice unset."""
        self._check_model_fits_data()
        tcfg = (self.config_init[self.subcommand] if self.subcommand else self.config_init).trainer
        callbacks = list(tcfg.get("callbacks") or [])
        if tcfg.get("enable_checkpointing") is not False and not any(isinstance(c, Checkpoint) for c in callbacks):
            # every epoch: the newest epoch=N.ckpt and last.ckpt, always overwritten in place (no last-v1.ckpt)
            callbacks.append(ModelCheckpoint(filename="{epoch}", save_last=True, enable_version_counter=False))
        if tcfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_REFRESH))
        kwargs["callbacks"] = callbacks
        if tcfg.get("logger") in (None, True):
            kwargs["logger"] = self._default_logger(Path(tcfg.get("default_root_dir") or "."), tcfg)
        if not tcfg.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    def _check_model_fits_data(self) -> None:
        model, dm = self.model, self.datamodule
        pixels = math.prod(dm.dims)
        if model.hparams.num_inputs != pixels:
            raise UserError(f"--model.num_inputs is {model.hparams.num_inputs}, but the data's images have {pixels} "
                            f"pixels ({'x'.join(map(str, dm.dims))}); use --model.num_inputs {pixels}")
        if model.hparams.num_outputs != dm.num_classes:
            raise UserError(f"--model.num_outputs is {model.hparams.num_outputs}, but the data has {dm.num_classes} "
                            f"classes; use --model.num_outputs {dm.num_classes}")

    def _default_logger(self, root: Path, tcfg) -> TensorBoardLogger:
        """TensorBoard in ``<root>/lightning_logs/version_N``: a new folder made exclusively, or, when fitting from a
        checkpoint that sits in a run folder, that folder (wherever it is now)."""
        save_dir, name, version = root, LOGS, None
        if tcfg.get("fast_dev_run") or rank_zero_only.rank != 0:
            pass  # Lightning writes no logs under fast_dev_run; other DDP ranks never write
        elif self.resume and self.resume.run and self.subcommand in (None, "fit"):
            run = self.resume.run
            self.run_folder.use(run)
            save_dir, name, version = run.parent.parent, run.parent.name, int(run.name.removeprefix("version_"))
        else:
            version = self.run_folder.create(root / LOGS)
        return TensorBoardLogger(save_dir=save_dir, name=name, version=version, default_hp_metric=False)


def make_cli(args: list[str] | None = None, run_folder: RunFolder | None = None) -> TrainCLI:
    """Parse ``args`` and build model, data module and Trainer as ``scripts/train.py`` does; a subcommand as the first
    argument also runs it (LightningCLI's ``run=True``), otherwise nothing is fitted yet."""
    args = list(args or [])
    recipe = not (args and args[0] in SUBCOMMANDS)
    strict = {"exit_on_error": False, "default_config_files": []}
    return TrainCLI(SoftmaxRegression, FashionMNISTDataModule, recipe=recipe, run_folder=run_folder or RunFolder(),
                    run=not recipe, args=args, trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0,
                    auto_configure_optimizers=False,  # the hand-written SGD is the model's own
                    save_config_callback=RunConfig, save_config_kwargs={"overwrite": True},
                    parser_kwargs={**strict, **{s: dict(strict) for s in SUBCOMMANDS}})


# ---------------------------------------------------------------------------------------------------- the recipe
def _ddp_checks(trainer, model: SoftmaxRegression) -> dict[str, Any]:
    """Across ranks: are W and b identical, and how many training samples did each rank see?"""
    params = trainer.strategy.all_gather(torch.cat([model.W.detach().flatten(), model.b.detach()]))
    seen = trainer.strategy.all_gather(torch.tensor(model.samples_seen, device=model.device))
    if trainer.world_size == 1:
        params, seen = params.unsqueeze(0), seen.reshape(1)
    return {"world_size": trainer.world_size, "ranks_weights_equal": bool((params == params[0]).all()),
            "train_samples_per_rank": [int(s) for s in seen]}


def summarize(metrics: dict[str, Any]) -> str:
    """The short table printed at the end of a run."""
    cols = ("train_loss", "train_acc", "val_acc", "test_acc", "train_seconds")
    head = "  ".join(f"{c:>13}" for c in cols)
    row = "  ".join(f"{metrics[c]:>13.4f}" if isinstance(metrics.get(c), float) else f"{'-':>13}" for c in cols)
    return f"{head}\n{row}"


def run_recipe(cli: TrainCLI) -> dict[str, Any]:
    """Fit (or resume), test, write ``metrics.json``; return the metrics."""
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=dm, ckpt_path=cli.resume.path if cli.resume else None, weights_only=True)
    trainer.test(model, datamodule=dm, verbose=False)
    history = next(c for c in trainer.callbacks if isinstance(c, ChapterFigures)).history
    last = history[-1] if history else {}
    metrics: dict[str, Any] = {k: last[k] for k in SERIES if k in last}
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")})
    ckpt = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    metrics.update(epochs=trainer.current_epoch, global_step=trainer.global_step,
                   train_seconds=round(sum(row.get("seconds", 0.0) for row in history), 3), checkpoint=ckpt or None,
                   **_ddp_checks(trainer, model), history=history)
    run_dir = Path(trainer.log_dir) if trainer.loggers and not trainer.fast_dev_run else None
    if trainer.is_global_zero:
        if run_dir is not None:
            write_json(run_dir / "metrics.json", metrics)
            files = [f for f in ("metrics.json", "checkpoints/last.ckpt", *FIGURES) if (run_dir / f).is_file()]
            where = f"run folder: {run_dir}  ({', '.join(files)})"
            if any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
                where += f"\nopen it in TensorBoard: tensorboard --logdir {run_dir.parent}"
        else:
            where = "no logger, so no run folder: nothing was written besides checkpoints (if enabled)"
        print(f"\n{summarize(metrics)}\n\n{where}", flush=True)
    return metrics


# ---------------------------------------------------------------------------------------------------- input files
def _count_values(node: yaml.Node, budget: int) -> int:
    """Values in a composed YAML document, aliases expanded, counting down from ``budget`` (stops below 0)."""
    stack = [node]
    while stack and budget >= 0:
        n = stack.pop()
        budget -= 1
        if isinstance(n, yaml.MappingNode):
            stack.extend(v for pair in n.value for v in pair)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return budget


def check_config_files(args: list[str]) -> list[str]:
    """Vet every ``--config FILE`` before jsonargparse reads it: a regular UTF-8 file of at most 1 MB whose YAML does
    not expand (through aliases) past ``MAX_CONFIG_VALUES`` values. An empty config means no overrides: dropped."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        value, step = (arg.split("=", 1)[1], 1) if arg.startswith("--config=") else \
            (args[i + 1], 2) if arg == "--config" and i + 1 < len(args) else (None, 1)
        if value is None or not (os.path.lexists(value) or value.endswith((".yaml", ".yml", ".json"))):
            out.append(arg)  # not --config, or a YAML string given inline
            i += 1
            continue
        text = read_small_text(value, "config file", "--config")
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            raise UserError(f"config file {value} is not valid YAML ({one_line(e, 160)}); fix it or "
                            f"pass another --config") from None
        if node is not None and _count_values(node, MAX_CONFIG_VALUES) < 0:
            raise UserError(f"config file {value} expands to more than {MAX_CONFIG_VALUES} values (YAML aliases); "
                            f"write the settings out plainly")
        if node is not None and not (isinstance(node, yaml.ScalarNode) and node.value == ""):
            out.extend(args[i : i + step])
        i += step
    return out


# ---------------------------------------------------------------------------------------------------- entry point
@contextlib.contextmanager
def quiet_lightning():
    """Drop lines of noise Lightning prints on every run while the block runs: adverts, a torch deprecation, and the
    seed (it is in ``config.yaml``; an error message stays the only line on stderr)."""
    def no_advert(record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in ("litlogger", "litmodels", "Seed set to"))

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero",
                                              "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed")]
    for lg in loggers:
        lg.addFilter(no_advert)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        # main() hands LightningCLI the vetted sys.argv (check_config_files), which LightningCLI warns about
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeFilter(no_advert)


def _option(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag value`` or ``--flag=value``; the last one wins), else ``None``."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _stopped_message(signum: int, run_folder: RunFolder, args: list[str]) -> str:
    name = signal.Signals(signum).name
    if run_folder.has_checkpoint():
        ckpt = run_folder.path / "checkpoints" / "last.ckpt"
        again = [a for i, a in enumerate(args) if not (a.startswith("--ckpt_path") or
                                                       (i and args[i - 1] == "--ckpt_path"))]
        return (f"stopped by {name}; {ckpt} holds the last finished epoch. Resume with: "
                f"{shlex.join(['python', 'scripts/train.py', *again, '--ckpt_path', str(ckpt)])}")
    return f"stopped by {name} before the first checkpoint; nothing to resume: run the same command again"


def main(args: list[str] | None = None) -> int:
    """Entry point of ``scripts/train.py``; returns the exit code.

    0: done (or nothing left to do); 2: bad input or a full disk, one ``error:`` line on stderr; 143 / 130: stopped
    by SIGTERM / Ctrl-C, with how to resume.
    """
    args = list(sys.argv[1:] if args is None else args)
    run_folder, code = RunFolder(), 1
    with stop_on_signals(), quiet_lightning():
        try:
            if args and args[0] in SUBCOMMANDS and (ckpt := _option(args, "--ckpt_path")) not in (None, "last"):
                read_checkpoint(ckpt)  # LightningCLI reads its hyper-parameters first: refuse a bad file in one line
            try:
                cli = make_cli(check_config_files(args), run_folder)
            except (ArgumentError, MisconfigurationException, ValueError, TypeError) as e:
                raise UserError(f"bad configuration: {one_line(e)} (see --help)") from None
            if cli.recipe:
                run_recipe(cli)
            code = 0
        except NothingToDo as e:
            print(e)
            code = 0
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            code = 2
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise
            print(f"error: {one_line(write_error(e.filename or run_folder.path or 'the run folder', e))}",
                  file=sys.stderr)
            code = 2
        except Stopped as e:
            print(f"error: {_stopped_message(e.signum, run_folder, args)}", file=sys.stderr)
            code = 128 + e.signum
        finally:
            run_folder.release(failed=code != 0)
    return code
