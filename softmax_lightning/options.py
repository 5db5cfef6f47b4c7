"""Checks of ``scripts/train.py``'s options that need no object yet, made before any memory, file or process is spent.

The model's, the data module's and ``ChapterFigures``' own arguments are checked in their ``__init__`` (each names
its ``--model.*`` / ``--data.*`` / ``--figures.*`` option), before any tensor is drawn; the model's sizes are not
options at all, they come from the data module (``link_arguments``). What is left is checked here: the config files
(before jsonargparse reads them) and the ``Trainer``'s limits and process counts (before any process starts).
``docs/options.md`` lists every option with its valid range.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import yaml

from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import check_path, read_small_text

MAX_SEED = 2**32 - 1  # the largest seed NumPy (and so Lightning's seed_everything) accepts
MAX_COUNT = 10**9  # the largest epoch, step or interval count accepted: beyond it, only a typo
PATH_OPTIONS = {
    "--ckpt_path": ".ckpt file (or 'last')",
    "--trainer.default_root_dir": "folder path",
    "--data.data_dir": "folder path",
}  # (a config option may also hold YAML inline: check_config_files)
CONFIG_GROUPS = ("--config", "--model", "--data", "--trainer", "--figures")  # options that take a config file
MAX_CONFIG_VALUES = 100_000  # a YAML config may expand (through aliases) to at most this many values
CLUSTER_VARIABLES = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "NODE_RANK", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE")


def max_cpu_processes() -> int:
    """The most CPU processes (``--trainer.devices`` on the CPU) a run may start: twice the cores, at least 4."""
    return max(4, 2 * (os.cpu_count() or 1))


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


def _read_config(path: str, flag: str) -> yaml.Node | None:
    """The composed YAML of a config file, after checking that it is a small regular UTF-8 file that does not expand
    past ``MAX_CONFIG_VALUES`` values (``None``: empty)."""
    text = read_small_text(path, "config file", flag)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise UserError(
            f"config file {path} is not valid YAML ({one_line(e, 160)}); fix it or pass another {flag}"
        ) from None
    if node is not None and _count_values(node, MAX_CONFIG_VALUES) < 0:
        raise UserError(
            f"config file {path} expands to more than {MAX_CONFIG_VALUES} values (YAML aliases); "
            f"write the settings out plainly"
        )
    return node


def _is_file_name(value: str) -> bool:
    """Whether a config option's value names a file (rather than holding YAML inline)."""
    return os.path.lexists(value) or value.endswith((".yaml", ".yml", ".json"))


def _nested_files(node: yaml.Node | None) -> list[tuple[str, str]]:
    """``(key, path)`` for each group of a config file given as the path of another file (``model: model.yaml``),
    at the top level or under a subcommand."""
    found = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if (
                f"--{key.value}" in CONFIG_GROUPS[1:]
                and isinstance(value, yaml.ScalarNode)
                and value.value
                and _is_file_name(value.value)
            ):
                found.append((key.value, value.value))
            elif key.value in ("fit", "validate", "test", "predict"):
                found += [(f"{key.value}.{k}", v) for k, v in _nested_files(value)]
    return found


def check_config_files(args: list[str]) -> list[str]:
    """Vet every config file before jsonargparse reads it (``--config FILE``, and a group's own ``--model FILE``,
    ``--data``, ``--trainer``, ``--figures``, also when a config file names one): a regular UTF-8 file of at most
    1 MB whose YAML does not expand (through aliases) past ``MAX_CONFIG_VALUES`` values. So a FIFO or ``/dev/zero``
    never hangs or fills memory. An empty ``--config`` means no overrides: dropped."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        flag = arg.split("=", 1)[0]
        value, step = (
            (arg.split("=", 1)[1], 1)
            if "=" in arg and flag in CONFIG_GROUPS
            else (args[i + 1], 2)
            if arg in CONFIG_GROUPS and i + 1 < len(args)
            else (None, 1)
        )
        if value is None or not _is_file_name(value):
            out.append(arg)  # not a config option, or YAML given inline
            i += 1
            continue
        node = _read_config(value, flag)
        for key, nested in _nested_files(node):
            _read_config(nested, f"'{key}:' in {value}")
        if flag != "--config" or (node is not None and not (isinstance(node, yaml.ScalarNode) and node.value == "")):
            out.extend(args[i : i + step])
        i += step
    return out


def _values(args: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` in ``args`` (``--flag value`` or ``--flag=value``)."""
    return [
        arg.split("=", 1)[1] if arg.startswith(flag + "=") else args[i + 1]
        for i, arg in enumerate(args)
        if arg.startswith(flag + "=") or (arg == flag and i + 1 < len(args))
    ]


def check_seed(value: Any, flag: str = "--seed_everything") -> None:
    """A seed is an integer in ``0..MAX_SEED`` (what NumPy accepts; the data module's shuffles and holdout use it
    too, so ``true``/``false``, LightningCLI's random or no seed, are not seeds here)."""
    if isinstance(value, bool) or (isinstance(value, int) and not 0 <= value <= MAX_SEED):
        raise UserError(f"seed_everything must be an integer in 0..{MAX_SEED}, got {value} ({flag})")


def check_options(args: list[str]) -> list[str]:
    """The command line before it is parsed: options that are not options here, path options given an empty or
    impossible string, a seed out of range, then the config files (returned vetted, ``check_config_files``)."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in ("--model.num_inputs", "--model.num_outputs"):
            raise UserError(
                f"{name} is not an option: the model's sizes come from the data (784 pixels, 10 classes); drop it"
            )
    for flag, what in PATH_OPTIONS.items():
        for value in _values(args, flag):
            check_path(value, flag, what)
    if any(not value.strip() for value in _values(args, "--config")):
        raise UserError("--config is an empty string; pass a YAML file")
    for value in _values(args, "--seed_everything"):
        with contextlib.suppress(yaml.YAMLError):  # not YAML at all: jsonargparse says so
            check_seed(yaml.safe_load(value))  # as jsonargparse reads it: "1_000" is 1000, "true" a bool
    return check_config_files(args)


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is one (or a string of one), else ``None`` ("auto", a list of devices, ...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_trainer(tcfg) -> None:
    """The ``Trainer``'s limits and process counts, before any process starts (Lightning checks the rest, in one
    line too: see ``docs/options.md``)."""
    if (tcfg.max_steps is None or tcfg.max_steps < 0) and (tcfg.max_epochs is None or tcfg.max_epochs < 1):
        raise UserError(f"max_epochs must be >= 1, got {tcfg.max_epochs} (--trainer.max_epochs)")
    for name, low, note in (
        ("max_epochs", -1, "-1: no limit"),
        ("max_steps", -1, "-1: no limit"),
        ("min_epochs", 0, ""),
        ("min_steps", 0, ""),
        ("check_val_every_n_epoch", 1, ""),
        ("num_sanity_val_steps", -1, "-1: all"),
        ("log_every_n_steps", 0, "0: never"),
        ("reload_dataloaders_every_n_epochs", 0, "0: never"),
    ):
        value = tcfg.get(name)
        if _is_number(value) and not low <= value <= MAX_COUNT:
            raise UserError(
                f"{name} must be in {low}..{MAX_COUNT}{f' ({note})' if note else ''}, got {value} (--trainer.{name})"
            )
    interval = tcfg.get("val_check_interval")
    if _is_number(interval) and not (0 < interval <= (1 if isinstance(interval, float) else MAX_COUNT)):
        raise UserError(
            f"val_check_interval must be a fraction of an epoch in (0, 1] or a count of batches in "
            f"1..{MAX_COUNT}, got {interval} (--trainer.val_check_interval)"
        )
    if tcfg.get("gradient_clip_val") not in (None, 0):
        raise UserError(
            f"gradient_clip_val must be 0 (or unset), got {tcfg.gradient_clip_val}: the hand-written SGD "
            f"(manual optimization) clips no gradients; drop --trainer.gradient_clip_val"
        )
    if tcfg.get("model_registry"):
        raise UserError(
            "--trainer.model_registry uploads checkpoints to a model registry, which this project does not "
            "use (checkpoints stay in the run folder); drop it"
        )
    if tcfg.get("default_root_dir") is not None:
        check_path(tcfg.default_root_dir, "--trainer.default_root_dir", "folder path")
    devices = _as_int(tcfg.devices)
    on_cpu = tcfg.accelerator == "cpu" or (tcfg.accelerator == "auto" and not torch.cuda.is_available())
    if devices is not None and on_cpu and devices > max_cpu_processes():
        raise UserError(
            f"devices must be at most {max_cpu_processes()} CPU processes on this machine "
            f"({os.cpu_count()} cores), got {devices} (--trainer.devices)"
        )
    nodes = _as_int(tcfg.num_nodes)
    if nodes is not None and nodes < 1:
        raise UserError(f"num_nodes must be >= 1, got {nodes} (--trainer.num_nodes)")
    if nodes is not None and nodes > 1 and not any(v in os.environ for v in CLUSTER_VARIABLES):
        raise UserError(
            f"--trainer.num_nodes {nodes} needs the other machines: start the same command on every node "
            f"under torchrun or SLURM (docs/distributed.md); here no cluster environment was found"
        )
