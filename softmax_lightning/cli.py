"""``scripts/train.py``: the chapter's recipe through ``LightningCLI``, and LightningCLI's own subcommands.

    python scripts/train.py                                   # the recipe: fit 10 epochs, test, write metrics.json
    python scripts/train.py --config configs/tuned.yaml       # the tuned recipe
    python scripts/train.py --model.lr 0.05 --trainer.max_epochs 3
    python scripts/train.py --ckpt_path last                  # resume the newest run, in its own folder
    python scripts/train.py fit --trainer.max_epochs 3        # LightningCLI subcommands: fit, validate, test, predict
    python scripts/train.py test --ckpt_path last             # results in <run>/test/, no new run folder

No subcommand means the recipe: LightningCLI's ``fit``, then (``after_fit``) the test split, ``metrics.json`` and a
summary. Runs land in Lightning's layout, ``<default_root_dir>/lightning_logs/version_N/`` (``runs.RunFolder``).
Our defaults (a TensorBoard logger, a checkpoint at every epoch's end with ``last.ckpt``, a progress bar, the
chapter's figures) fill only what the user's ``--trainer.*`` options leave unset. With ``--ckpt_path``, the run's
own settings (its ``config.yaml``, and the checkpoint's model and data settings) apply unless the user types
others; typed model or data settings that differ from the checkpoint's are refused, by name.

Bad input and a full disk end with one ``error:`` line on stderr and exit code 2, never a traceback. SIGTERM
(Lightning stops at the next batch: ``SIGTERMException``) and Ctrl-C end with one line naming the command that
resumes, and exit codes 143 and 130. Output into a closed pipe ends quietly with 141.
"""

from __future__ import annotations

import errno
import logging
import shlex
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from softmax_lightning.callbacks import SERIES, ChapterFigures, EpochLog
from softmax_lightning.checkpoint import (LOGS, AtomicCheckpointIO, finished, newest_checkpoint, read_checkpoint,
                                          run_folder_of)
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import exit_quietly_on_broken_pipe, write_error, write_json
from softmax_lightning.model import SoftmaxRegression
from softmax_lightning.options import check_config_files, check_options, check_trainer
from softmax_lightning.runs import FIGURES, RunFolder, complete_outputs

SUBCOMMANDS = ("fit", "validate", "test", "predict")
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "num_sanity_val_steps": 0,  # the chapter evaluates after each epoch, not before
    "enable_model_summary": False,
}
PROGRESS_REFRESH = 50  # batches between progress-bar redraws (~5 per epoch): each costs ~2 ms, a step ~2 ms
UNCHECKED_ON_RESUME = {"data_dir", "num_workers", "download"}  # where the data is and how it is read: free to change
RECIPE_HELP = ("The chapter's recipe: fit (10 epochs, batch 256, lr 0.1), then the test split, metrics.json and a "
               "summary, in lightning_logs/version_N. The options below are those of LightningCLI's fit. "
               "LightningCLI's own subcommands work too: scripts/train.py {fit,validate,test,predict} --help. "
               "Every option's range: docs/options.md.")


class NothingToDo(Exception):
    """The run asked for is already complete: say so, change nothing, exit 0."""


@dataclass
class Resume:
    """The checkpoint a run starts from, already loaded safely and checked."""

    path: Path
    checkpoint: dict[str, Any]
    run: Path | None  # the run folder it belongs to, if it sits in Lightning's layout


class RunConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the run folder, written only where there is a run folder (a logger, and no
    ``fast_dev_run``): never into the working directory over a file of the user's."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.loggers and not trainer.fast_dev_run:
            super().setup(trainer, pl_module, stage)


class TrainCLI(LightningCLI):
    """``LightningCLI`` with the project's defaults, run folders, resume rules and the recipe (``after_fit``).

    Args:
        recipe: after ``fit``, test and write ``metrics.json`` (``scripts/train.py`` with no subcommand).
        run_folder: records the run folder this process writes, for cleanup by the caller.
    """

    def __init__(self, *args: Any, recipe: bool, run_folder: RunFolder, **kwargs: Any) -> None:
        self.recipe, self.run_folder, self.resume = recipe, run_folder, None
        self.given_args = list(kwargs.get("args") or [])  # what the user typed, to tell their settings from defaults
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ChapterFigures, "figures")  # --figures.labels zh, --figures.n_images 8
        parser.link_arguments("seed_everything", "data.seed")
        parser.link_arguments("data.val_size", "figures.val_name", compute_fn=lambda n: "val" if n else "test")
        # the model's sizes are the data's: not options, so they can never disagree (or be huge)
        parser.link_arguments("data", "model.num_inputs", compute_fn=lambda dm: dm.pixels, apply_on="instantiate")
        parser.link_arguments("data", "model.num_outputs", compute_fn=lambda dm: dm.num_classes,
                              apply_on="instantiate")

    @property
    def fn(self) -> str:
        """The Trainer function this run calls: its subcommand, or ``fit`` (``make_cli`` without running)."""
        return self.subcommand or "fit"

    def _cfg(self):
        """This run's configuration (the subcommand's, if any)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Checks that need no objects yet: the Trainer's limits, and the checkpoint to start from (loaded safely,
        compared with what the user typed, its run's settings applied)."""
        cfg = self._cfg()
        if cfg.get("weights_only") is False:
            raise UserError("--weights_only false would let a checkpoint run code while it loads; this project "
                            "loads checkpoints with weights_only=True only: drop the option")
        if "weights_only" in cfg:
            cfg.weights_only = True
        check_trainer(cfg.trainer)
        if cfg.get("ckpt_path"):
            self._resume_from(cfg)

    def _resume_from(self, cfg) -> None:
        root = Path(cfg.trainer.default_root_dir or ".")
        path = newest_checkpoint(root) if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
        checkpoint = read_checkpoint(path)
        typed = self._typed_settings()
        saved = {"model": {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k[0] != "_"},
                 "data": dict(checkpoint.get("datamodule_hyper_parameters") or {})}
        diffs = [f"{_flag(key)} {value!r} (the checkpoint has {saved[group][name]!r})"
                 for key, value in typed.items() for group, name in [key.split(".", 1)]
                 if name in saved[group] and name not in UNCHECKED_ON_RESUME and saved[group][name] != value
                 and (group == "model" or self.fn == "fit")]
        if diffs:
            raise UserError(f"cannot use {path} with changed settings: {'; '.join(diffs)}. A run folder records what "
                            f"it trained with: drop those options to use the checkpoint's, or start a new run without "
                            f"--ckpt_path")
        run = run_folder_of(path)
        # the run's own settings (its config.yaml: trainer, figures, ...), then what the user typed, then the
        # checkpoint's model and data settings wherever the user typed none
        own = ["--config", str(run / "config.yaml")] if run and (run / "config.yaml").is_file() else []
        user = self.given_args[1:] if self.subcommand else self.given_args
        args = [*check_config_files(own), *user, f"--ckpt_path={path}"]
        self.config = self.parser.parse_args([self.subcommand, *args] if self.subcommand else args)
        cfg = self._cfg()
        for group in ("model", "data"):
            for name, value in saved[group].items():
                if f"{group}.{name}" not in typed and name in cfg[group] and name not in UNCHECKED_ON_RESUME:
                    cfg[group][name] = value
        cfg.seed_everything = cfg.data.seed
        L.seed_everything(cfg.seed_everything, verbose=False)  # (DDP's sampler reads it)
        shape = tuple(checkpoint["state_dict"]["W"].shape)
        if shape != (FashionMNISTDataModule.pixels, FashionMNISTDataModule.num_classes):
            raise UserError(f"checkpoint {path} holds W of shape {shape}, but Fashion-MNIST needs (784, 10) (784 "
                            f"pixels, 10 classes); pass --ckpt_path with a checkpoint of this model")
        self.resume = Resume(path, checkpoint, run)
        if self.fn != "fit" or run is None:
            return
        if rank_zero_only.rank == 0:  # the lock is rank 0's
            RunFolder.check_free(run)
        tcfg = cfg.trainer
        if self.recipe and finished(checkpoint, tcfg.max_epochs, tcfg.max_steps) and complete_outputs(run):
            raise NothingToDo(f"run {run} is complete ({checkpoint.get('global_step')} steps, {tcfg.max_epochs} "
                              f"epochs asked): nothing left to train and every file is as it was. To train longer, "
                              f"resume with a larger --trainer.max_epochs")  # on every rank

    def _typed_settings(self) -> dict[str, Any]:
        """``model.*`` / ``data.*`` settings the user's arguments (config files included) set to something other
        than the defaults."""
        sub = [self.subcommand] if self.subcommand else []
        given, default = (self.parser.parse_args(a) for a in (self.given_args, sub))
        given, default = (ns[self.subcommand] if sub else ns for ns in (given, default))
        return {f"{g}.{k}": v for g in ("model", "data") for k, v in given[g].items() if default[g].get(k) != v}

    def instantiate_trainer(self, **kwargs: Any):
        """The user's Trainer options, with our defaults only where they left a choice unset."""
        tcfg = (self.config_init[self.subcommand] if self.subcommand else self.config_init).trainer
        callbacks = list(tcfg.get("callbacks") or [])
        fitting = self.fn == "fit"
        if fitting and tcfg.get("enable_checkpointing") is not False and not any(isinstance(c, Checkpoint)
                                                                                 for c in callbacks):
            # at every epoch's end (also when validation is sparser), the newest epoch=N.ckpt and last.ckpt, always
            # overwritten in place (no last-v1.ckpt)
            callbacks.append(ModelCheckpoint(filename="{epoch}", save_last=True, enable_version_counter=False,
                                             save_on_train_epoch_end=True))
        if not fitting and tcfg.get("enable_checkpointing") is None:
            kwargs["enable_checkpointing"] = False  # evaluating writes no checkpoints
        if tcfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_REFRESH) if sys.stdout.isatty() else EpochLog())
        kwargs["callbacks"] = callbacks
        if tcfg.get("logger") in (None, True):
            kwargs["logger"] = self._default_logger(Path(tcfg.get("default_root_dir") or "."), tcfg)
        if not tcfg.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    def _default_logger(self, root: Path, tcfg) -> TensorBoardLogger:
        """TensorBoard in ``<root>/lightning_logs/version_N``: a new folder made exclusively, or, from a checkpoint
        that sits in a run folder, that folder (wherever it is now): ``fit`` continues there, and ``validate``,
        ``test`` and ``predict`` write into its subfolder of their name."""
        if tcfg.get("fast_dev_run") or rank_zero_only.rank != 0:  # no logs under fast_dev_run; other ranks never write
            return TensorBoardLogger(save_dir=root, name=LOGS, default_hp_metric=False)
        run = self.resume.run if self.resume else None
        if run is None:
            version = self.run_folder.create(root / LOGS)
            return TensorBoardLogger(save_dir=root, name=LOGS, version=version, default_hp_metric=False)
        if self.fn == "fit":
            self.run_folder.use(run)
        return TensorBoardLogger(save_dir=run.parent.parent, name=run.parent.name, version=run.name,
                                 sub_dir=None if self.fn == "fit" else self.fn, default_hp_metric=False)

    def after_fit(self) -> None:
        if self.recipe:
            run_recipe_end(self)

    def after_validate(self) -> None:
        self._evaluated()

    def after_test(self) -> None:
        self._evaluated()

    def after_predict(self) -> None:
        self._evaluated()

    def _evaluated(self) -> None:
        """Keep what ``validate`` / ``test`` computed (``metrics.json``) in the results folder, and say where it is."""
        trainer = self.trainer
        if not (trainer.is_global_zero and trainer.loggers and not trainer.fast_dev_run):
            return
        results = Path(trainer.log_dir)
        if self.fn != "predict":
            write_json(results / "metrics.json", {k: float(v) for k, v in trainer.callback_metrics.items()})
        print(f"{self.fn} results: {results}", flush=True)


def _flag(key: str) -> str:
    """The command-line flag of a ``model.*`` / ``data.*`` setting."""
    return "--seed_everything" if key == "data.seed" else f"--{key}"


def make_cli(args: list[str] | None = None, run_folder: RunFolder | None = None, recipe: bool = True,
             run: bool = False) -> TrainCLI:
    """Parse ``args`` and build model, data module and Trainer as ``scripts/train.py`` does. With ``run``, ``args``
    start with a subcommand, which is run (``fit`` with ``recipe`` also tests and writes ``metrics.json``); without,
    nothing is fitted yet (``args`` are ``fit``'s options: call ``run_recipe``)."""
    strict = {"exit_on_error": False, "default_config_files": []}
    fit = {**strict, "description": RECIPE_HELP if recipe else None}
    return TrainCLI(SoftmaxRegression, FashionMNISTDataModule, recipe=recipe, run_folder=run_folder or RunFolder(),
                    run=run, args=list(args or []), trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0,
                    auto_configure_optimizers=False,  # the hand-written SGD is the model's own
                    save_config_callback=RunConfig, save_config_kwargs={"overwrite": True},
                    parser_kwargs={**strict, **{s: dict(strict) for s in SUBCOMMANDS}, "fit": fit})


# ---------------------------------------------------------------------------------------------------- the recipe
def run_recipe(cli: TrainCLI) -> dict[str, Any]:
    """Fit (or resume) then ``run_recipe_end``: for a CLI made with ``make_cli(run=False)``."""
    cfg = cli.config
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    return run_recipe_end(cli)


def run_recipe_end(cli: TrainCLI) -> dict[str, Any]:
    """After fitting: test, write ``metrics.json`` into the run folder, print the summary; return the metrics."""
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    trainer.test(model, datamodule=dm, verbose=False)
    figs = next(c for c in trainer.callbacks if isinstance(c, ChapterFigures))
    history = figs.history
    last = history[-1] if history else {}
    metrics: dict[str, Any] = {k: last[k] for k in SERIES if k in last}
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")})
    ckpt = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    metrics.update(epochs=trainer.current_epoch, global_step=trainer.global_step, world_size=trainer.world_size,
                   validated_on="test split" if figs.val_name == "test" else f"{dm.hparams.val_size} held-out images",
                   train_seconds=round(sum(row.get("seconds", 0.0) for row in history), 3), checkpoint=ckpt or None,
                   history=history)
    run_dir = Path(trainer.log_dir) if trainer.loggers and not trainer.fast_dev_run else None
    if trainer.is_global_zero:
        if run_dir is not None:
            write_json(run_dir / "metrics.json", metrics)
            files = [f for f in ("metrics.json", "checkpoints/last.ckpt", *FIGURES) if (run_dir / f).is_file()]
            where = f"run folder: {run_dir}  ({', '.join(files)})"
            if any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
                where += f"\nsee it in TensorBoard: {_tensorboard_command(run_dir.parent)}"
        else:
            where = "no logger, so no run folder: nothing was written besides checkpoints (if enabled)"
        print(f"\n{summarize(metrics, figs.val_name)}\n\n{where}", flush=True)
    return metrics


def _tensorboard_command(logdir: Path) -> str:
    """The command that opens ``logdir`` in TensorBoard with this interpreter, so it works as printed in a new shell
    (no venv to activate): ``.venv/bin/python -m tensorboard.main --logdir lightning_logs`` from the repository."""
    python = Path(sys.executable)
    if Path.cwd() in python.parents:
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), "-m", "tensorboard.main", "--logdir", str(logdir)])


def summarize(metrics: dict[str, Any], val_name: str = "val") -> str:
    """The short table printed at the end of a run (validation on the test split is the test column: not repeated)."""
    cols = ("train_loss", "train_acc", *(("val_acc",) if val_name == "val" else ()), "test_acc", "train_seconds")
    head = "  ".join(f"{c:>13}" for c in cols)
    row = "  ".join(f"{metrics[c]:>13.4f}" if isinstance(metrics.get(c), float) else f"{'-':>13}" for c in cols)
    note = "" if val_name == "val" else "\n(validated on the test split after every epoch, as the chapter does)"
    return f"{head}\n{row}{note}"


# ---------------------------------------------------------------------------------------------------- entry point
NOISE = ("litlogger", "litmodels", "Seed set to", "Received SIGTERM", "Detected KeyboardInterrupt")


@contextmanager
def quiet_lightning():
    """Drop lines of noise Lightning prints on every run while the block runs (adverts, the seed, which
    ``config.yaml`` records, the SIGTERM notice), and two warnings: a torch deprecation inside Lightning, and the one
    about our ``args``: ``main`` hands LightningCLI the vetted ``sys.argv``."""
    def no_noise(record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in NOISE)

    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
             "lightning.fabric.utilities.seed", "lightning.pytorch.trainer.connectors.signal_connector")
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addFilter(no_noise)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        warnings.filterwarnings("ignore", message=r".* is not in bounds, numpy accepts")  # refused in one line
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeFilter(no_noise)


def _resume_hint(run_folder: RunFolder, subcommand: str | None) -> str:
    """How to resume after a stop: the run's own checkpoint carries its settings (``config.yaml``)."""
    if not run_folder.has_checkpoint():
        return "before the first checkpoint; nothing to resume: run the same command again"
    ckpt = run_folder.path / "checkpoints" / "last.ckpt"
    sub = [subcommand] if subcommand else []
    return (f"{ckpt} holds the last finished epoch. Resume with: "
            f"{shlex.join(['python', 'scripts/train.py', *sub, '--ckpt_path', str(ckpt)])}")


@exit_quietly_on_broken_pipe
def main(args: list[str] | None = None) -> int:
    """Entry point of ``scripts/train.py``; returns the exit code.

    0: done (or nothing left to do); 2: bad input or a full disk, one ``error:`` line on stderr; 143 / 130: stopped
    by SIGTERM / Ctrl-C, with how to resume; 141: stdout was closed (a pipe).
    """
    args = list(sys.argv[1:] if args is None else args)
    recipe = not (args and args[0] in SUBCOMMANDS)
    argv = ["fit", *args] if recipe else args
    run_folder, code = RunFolder(), 1
    with quiet_lightning():
        try:
            try:
                make_cli([argv[0], *check_options(argv[1:])], run_folder, recipe=recipe, run=True)
            except (ArgumentError, MisconfigurationException, ValueError, TypeError) as e:
                raise UserError(f"bad configuration: {one_line(e)} (see --help)") from None
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
        except SIGTERMException:  # Lightning's own, raised at a batch boundary, agreed across ranks
            print(f"error: stopped by SIGTERM; {_resume_hint(run_folder, None if recipe else argv[0])}",
                  file=sys.stderr)
            code = 143
        except SystemExit as e:  # --help, --print_config; Lightning ends a Ctrl-C with sys.exit(1)
            if isinstance(e.__context__, KeyboardInterrupt):
                print(f"error: stopped by Ctrl-C; {_resume_hint(run_folder, None if recipe else argv[0])}",
                      file=sys.stderr)
                code = 130
            else:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
        except KeyboardInterrupt:
            print(f"error: stopped by Ctrl-C; {_resume_hint(run_folder, None if recipe else argv[0])}",
                  file=sys.stderr)
            code = 130
        finally:
            run_folder.release(failed=code != 0)
    return code
