"""Checks of ``scripts/train.py``'s options that need no object yet, made before any memory, file or process is spent.

The model's, the data module's and ``ChapterFigures``' own arguments are checked in their ``__init__`` (each names
its ``--model.*`` / ``--data.*`` / ``--figures.*`` option), before any tensor is drawn; the model's sizes are not
options at all, they come from the data module (``link_arguments``). What is left is checked here: the config files
(before jsonargparse reads them) and the ``Trainer``'s limits and process counts (before any process starts).
``docs/options.md`` lists every option with its valid range.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import yaml

from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import read_small_text

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


def check_options(args: list[str]) -> list[str]:
    """The command line before it is parsed: options that are not options here, then the config files (returned
    vetted, ``check_config_files``)."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in ("--model.num_inputs", "--model.num_outputs"):
            raise UserError(f"{name} is not an option: the model's sizes come from the data (784 pixels, 10 classes); "
                            f"drop it")
    return check_config_files(args)


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is one (or a string of one), else ``None`` ("auto", a list of devices, ...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else None


def check_trainer(tcfg) -> None:
    """The ``Trainer``'s limits and process counts, before any process starts (Lightning checks the rest)."""
    if (tcfg.max_steps is None or tcfg.max_steps < 0) and (tcfg.max_epochs is None or tcfg.max_epochs < 1):
        raise UserError(f"max_epochs must be >= 1, got {tcfg.max_epochs} (--trainer.max_epochs)")
    devices = _as_int(tcfg.devices)
    on_cpu = tcfg.accelerator == "cpu" or (tcfg.accelerator == "auto" and not torch.cuda.is_available())
    if devices is not None and on_cpu and devices > max_cpu_processes():
        raise UserError(f"devices must be at most {max_cpu_processes()} CPU processes on this machine "
                        f"({os.cpu_count()} cores), got {devices} (--trainer.devices)")
    nodes = _as_int(tcfg.num_nodes)
    if nodes is not None and nodes < 1:
        raise UserError(f"num_nodes must be >= 1, got {nodes} (--trainer.num_nodes)")
    if nodes is not None and nodes > 1 and not any(v in os.environ for v in CLUSTER_VARIABLES):
        raise UserError(f"--trainer.num_nodes {nodes} needs the other machines: start the same command on every node "
                        f"under torchrun or SLURM (docs/distributed.md); here no cluster environment was found")
