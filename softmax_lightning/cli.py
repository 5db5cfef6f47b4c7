"""``scripts/train.py``: the chapter's recipe through ``LightningCLI``, and LightningCLI's own subcommands.

    python scripts/train.py                                   # the recipe: fit 10 epochs, test, write metrics.json
    python scripts/train.py --config configs/tuned.yaml       # the tuned recipe
    python scripts/train.py --model.lr 0.05 --trainer.max_epochs 3
    python scripts/train.py --ckpt_path last                  # resume the newest run, in its own folder
    python scripts/train.py fit --trainer.max_epochs 3        # LightningCLI subcommands: fit, validate, test, predict
    python scripts/train.py test --ckpt_path last             # results in <run>/test/, no new run folder

The wiring, in the order it runs: ``main`` checks the command line (``options``) and the checkpoint, ``TrainCLI``
parses it (the model's sizes linked to the data's), applies a checkpoint's own settings (``resume``), adds our
defaults to the ``Trainer`` (a TensorBoard logger in a new ``runs.RunFolder``, a checkpoint at every epoch's end, a
progress bar, the chapter's figures) wherever the user left them unset, and runs the subcommand; with none, ``fit``
and then the rest of the recipe (``recipe.finish``: the test split, ``metrics.json``, a summary).

Bad input and a full disk end with one ``error:`` line on stderr and exit code 2, never a traceback. SIGTERM
(Lightning stops at the next batch boundary, with ``SIGTERMException``) and Ctrl-C end with one line naming the command
that resumes, and exit codes 143 and 130. Output into a closed pipe ends quietly with 141.
"""

from __future__ import annotations

import errno
import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from softmax_lightning import recipe
from softmax_lightning.callbacks import ChapterFigures, EpochLog
from softmax_lightning.checkpoint import LOGS, AtomicCheckpointIO, newest_checkpoint, read_checkpoint
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import check_path, exit_quietly_on_broken_pipe, write_error
from softmax_lightning.model import SoftmaxRegression
from softmax_lightning.options import check_config_files, check_options, check_trainer
from softmax_lightning.resume import NothingToDo, Resume, typed_settings
from softmax_lightning.runs import RunFolder

SUBCOMMANDS = ("fit", "validate", "test", "predict")
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "num_sanity_val_steps": 0,  # the chapter evaluates after each epoch, not before
    "enable_model_summary": False,
}
PROGRESS_REFRESH = 50  # batches between progress-bar redraws (~5 per epoch): each costs ~2 ms, a step ~2 ms
RECIPE_HELP = (
    "The chapter's recipe: fit (10 epochs, batch 256, lr 0.1), then the test split, metrics.json and a "
    "summary, in lightning_logs/version_N. The options below are those of LightningCLI's fit. "
    "LightningCLI's own subcommands work too: scripts/train.py {fit,validate,test,predict} --help. "
    "Every option's range: docs/options.md."
)


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
        parser.link_arguments("data", "model.num_outputs", compute_fn=lambda dm: dm.num_classes, apply_on="instantiate")

    @property
    def fn(self) -> str:
        """The Trainer function this run calls: its subcommand, or ``fit`` (``make_cli`` without running)."""
        return self.subcommand or "fit"

    def _cfg(self):
        """This run's configuration (the subcommand's, if any)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Checks that need no objects yet (the Trainer's limits), and the checkpoint to start from."""
        cfg = self._cfg()
        if cfg.get("weights_only") is False:
            raise UserError(
                "--weights_only false would let a checkpoint run code while it loads; this project "
                "loads checkpoints with weights_only=True only: drop the option"
            )
        if "weights_only" in cfg:
            cfg.weights_only = True
        check_trainer(cfg.trainer)
        if cfg.get("ckpt_path") is not None:
            check_path(cfg.ckpt_path, "--ckpt_path", ".ckpt file (or 'last')")  # (also from a config file)
            self._start_from(cfg)

    def _start_from(self, cfg) -> None:
        """Load the checkpoint safely, refuse typed settings that differ from its own, and parse again: the run's
        ``config.yaml``, then what the user typed, then the checkpoint's settings wherever the user typed none."""
        root = Path(cfg.trainer.default_root_dir or ".")
        path = newest_checkpoint(root) if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
        self.resume = resume = Resume.of(path, read_checkpoint(path))
        user = self.given_args[1:] if self.subcommand else self.given_args
        as_typed = self.parser.parse_args(self.given_args)  # (LightningCLI has put the checkpoint's model settings
        as_typed = as_typed[self.subcommand] if self.subcommand else as_typed  # into self.config already)
        typed = typed_settings(user, as_typed, self.subcommand)
        resume.refuse_changes(typed, data_too=self.fn == "fit")
        args = [*check_config_files(resume.own_config()), *user, f"--ckpt_path={path}"]
        self.config = self.parser.parse_args([self.subcommand, *args] if self.subcommand else args)
        cfg = self._cfg()
        resume.apply(cfg, typed)
        L.seed_everything(cfg.seed_everything, verbose=False)  # (DDP's sampler reads it)
        if tuple(resume.checkpoint["state_dict"]["W"].shape) != (FashionMNISTDataModule.pixels, 10):
            raise UserError(
                f"checkpoint {path} holds W of shape {tuple(resume.checkpoint['state_dict']['W'].shape)}, "
                f"but Fashion-MNIST needs (784, 10); pass --ckpt_path with a checkpoint of this model"
            )
        if self.fn == "fit" and resume.run is not None:
            if rank_zero_only.rank == 0:  # the lock is rank 0's
                RunFolder.check_free(resume.run)
            if self.recipe:
                resume.check_not_done(cfg.trainer.max_epochs, cfg.trainer.max_steps)  # (on every rank)

    def instantiate_trainer(self, **kwargs: Any):
        """The user's Trainer options, with our defaults only where they left a choice unset."""
        init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        tcfg = init.trainer
        callbacks = list(tcfg.get("callbacks") or [])
        fitting = self.fn == "fit"
        if (
            fitting
            and tcfg.get("enable_checkpointing") is not False
            and not any(isinstance(c, Checkpoint) for c in callbacks)
        ):
            # at every epoch's end (also when validation is sparser), the newest epoch=N.ckpt and last.ckpt, always
            # overwritten in place (no last-v1.ckpt)
            callbacks.append(
                ModelCheckpoint(
                    filename="{epoch}", save_last=True, enable_version_counter=False, save_on_train_epoch_end=True
                )
            )
        if not fitting and tcfg.get("enable_checkpointing") is None:
            kwargs["enable_checkpointing"] = False  # evaluating writes no checkpoints
        if tcfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            val_name = init.figures.val_name  # "test" when validation runs on the test split
            bar = TQDMProgressBar(refresh_rate=PROGRESS_REFRESH, leave=True)  # (leave: one bar kept per epoch)
            callbacks.append(bar if sys.stdout.isatty() else EpochLog(val_name))
        kwargs["callbacks"] = callbacks
        if tcfg.get("logger") in (None, True):
            kwargs["logger"] = self._default_logger(Path(tcfg.get("default_root_dir") or "."), tcfg)
        plugins = tcfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        strategy = tcfg.get("strategy")
        if isinstance(strategy, Strategy):  # a strategy object: its own checkpoint writer, or ours instead of torch's
            if type(strategy.checkpoint_io) is TorchCheckpointIO:
                strategy.checkpoint_io = AtomicCheckpointIO()
        elif not any(isinstance(p, CheckpointIO) for p in plugins):  # the user's plugins, and atomic checkpoints
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
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
        return TensorBoardLogger(
            save_dir=run.parent.parent,
            name=run.parent.name,
            version=run.name,
            sub_dir=None if self.fn == "fit" else self.fn,
            default_hp_metric=False,
        )

    def after_fit(self) -> None:
        if self.recipe:
            recipe.finish(self.trainer, self.model, self.datamodule)

    def after_validate(self) -> None:
        recipe.keep_results(self.trainer, "validate")

    def after_test(self) -> None:
        recipe.keep_results(self.trainer, "test")

    def after_predict(self) -> None:
        recipe.keep_results(self.trainer, "predict")


def make_cli(
    args: list[str] | None = None, run_folder: RunFolder | None = None, recipe: bool = True, run: bool = False
) -> TrainCLI:
    """Parse ``args`` and build model, data module and Trainer as ``scripts/train.py`` does. With ``run``, ``args``
    start with a subcommand, which is run (``fit`` with ``recipe`` also tests and writes ``metrics.json``); without,
    nothing is fitted yet (``args`` are ``fit``'s options: call ``run_recipe``)."""
    strict = {"exit_on_error": False, "default_config_files": [], "allow_abbrev": False}  # no --model.l for --model.lr
    fit = {**strict, "description": RECIPE_HELP if recipe else None}
    return TrainCLI(
        SoftmaxRegression,
        FashionMNISTDataModule,
        recipe=recipe,
        run_folder=run_folder or RunFolder(),
        run=run,
        args=list(args or []),
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        auto_configure_optimizers=False,  # the hand-written SGD is the model's own
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**strict, **{s: dict(strict) for s in SUBCOMMANDS}, "fit": fit},
    )


def run_recipe(cli: TrainCLI) -> dict[str, Any]:
    """Fit (or resume), then ``recipe.finish``, for a CLI made with ``make_cli(run=False)``; return the metrics."""
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.get("ckpt_path"), weights_only=True)
    return recipe.finish(cli.trainer, cli.model, cli.datamodule)


# ---------------------------------------------------------------------------------------------------- entry point
NOISE = ("litlogger", "litmodels", "Seed set to", "Received SIGTERM", "Detected KeyboardInterrupt")


@contextmanager
def quiet_lightning(from_checkpoint: bool = False):
    """Drop lines of noise Lightning prints on every run while the block runs (adverts, the seed, which
    ``config.yaml`` records, the SIGTERM and Ctrl-C notices: our own line follows), and four warnings: a torch
    deprecation inside Lightning, the one about our ``args`` (``main`` hands LightningCLI the vetted ``sys.argv``),
    the seed's bounds (the data module refuses such a seed in one line) and torchmetrics' about restored sums; with
    ``from_checkpoint`` (``--ckpt_path``), three more that resuming or evaluating from a run's own checkpoint meets.
    All are as before after the block."""

    def no_noise(record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in NOISE)

    names = (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch.trainer.connectors.signal_connector",
    )
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addFilter(no_noise)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        warnings.filterwarnings("ignore", message=r".* is not in bounds, numpy accepts")
        # resumed before an epoch's end, the train metrics have their sums from the checkpoint, which torchmetrics
        # does not count as updates
        warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric .* before the ``update``")
        if from_checkpoint:
            # evaluating with --ckpt_path restores the weights; the checkpoint's own callbacks are not needed
            warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used")
            # resuming continues in the run's own folder, whose checkpoints are expected there
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            # a run folder that was moved keeps writing its own checkpoints, wherever it is now (docs/reliability.md)
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeFilter(no_noise)


def _option(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag value`` or ``--flag=value``; the last one wins), else ``None``."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _resume_hint(run_folder: RunFolder, subcommand: str | None) -> str:
    """How to resume after a stop: the run's checkpoint, whose folder carries the run's settings (``config.yaml``)."""
    if not run_folder.has_checkpoint():
        return "before the first checkpoint; nothing to resume: run the same command again"
    ckpt = recipe.here(run_folder.path / "checkpoints" / "last.ckpt")
    sub = [subcommand] if subcommand else []
    resume = recipe.command("scripts/train.py", *sub, "--ckpt_path", ckpt)
    return f"{ckpt} holds the last checkpoint. Resume with: {resume}"


@exit_quietly_on_broken_pipe
def main(args: list[str] | None = None) -> int:
    """Entry point of ``scripts/train.py``; returns the exit code.

    0: done (or nothing left to do); 2: bad input or a full disk, one ``error:`` line on stderr; 143 / 130: stopped
    by SIGTERM / Ctrl-C, with how to resume; 141: stdout was closed (a pipe).
    """
    args = list(sys.argv[1:] if args is None else args)
    recipe_mode = not (args and args[0] in SUBCOMMANDS)
    argv = ["fit", *args] if recipe_mode else args
    subcommand = None if recipe_mode else argv[0]
    run_folder, code = RunFolder(), 1
    with quiet_lightning(from_checkpoint=_option(argv, "--ckpt_path") is not None):
        try:
            checked = check_options(argv[1:])
            if (ckpt := _option(argv, "--ckpt_path")) not in (None, "last"):
                read_checkpoint(ckpt)  # LightningCLI reads its hyper-parameters first: refuse a bad file in one line
            try:
                make_cli([argv[0], *checked], run_folder, recipe=recipe_mode, run=True)
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
            print(
                f"error: {one_line(write_error(e.filename or run_folder.path or 'the run folder', e))}", file=sys.stderr
            )
            code = 2
        except SIGTERMException:  # Lightning's own, raised at a batch boundary, agreed across ranks
            print(f"error: stopped by SIGTERM; {_resume_hint(run_folder, subcommand)}", file=sys.stderr)
            code = 143
        except (KeyboardInterrupt, SystemExit) as e:  # Lightning ends a Ctrl-C with sys.exit(1); --help exits 0
            if isinstance(e, SystemExit) and not isinstance(e.__context__, KeyboardInterrupt):
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
            else:
                print(f"error: stopped by Ctrl-C; {_resume_hint(run_folder, subcommand)}", file=sys.stderr)
                code = 130
        finally:
            run_folder.release(failed=code != 0)
    return code
