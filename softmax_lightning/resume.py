"""Resuming and evaluating from a checkpoint: the run's own settings apply unless the user types others.

A checkpoint records the model's and the data module's settings (``hyper_parameters``,
``datamodule_hyper_parameters``), and its run folder records the whole configuration (``config.yaml``). So
``--ckpt_path`` alone continues any run with what it was trained with. Settings the user *typed* (as options or in a
``--config`` file) that differ from the checkpoint's are refused, by name: a run folder must record what it trained
with. Where the data is and how it is read (``UNCHECKED``) may always change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from softmax_lightning.checkpoint import finished, run_folder_of
from softmax_lightning.errors import UserError
from softmax_lightning.runs import complete_outputs

UNCHECKED = {"data_dir", "num_workers", "download"}  # where the data is and how it is read: free to change


class NothingToDo(Exception):
    """The run asked for is already complete: say so, change nothing, exit 0."""


@dataclass
class Resume:
    """The checkpoint a run starts from, already loaded safely and checked."""

    path: Path
    checkpoint: dict[str, Any]
    run: Path | None  # the run folder it belongs to, if it sits in Lightning's layout

    @classmethod
    def of(cls, path: Path, checkpoint: dict[str, Any]) -> Resume:
        return cls(path, checkpoint, run_folder_of(path))

    @property
    def saved(self) -> dict[str, dict[str, Any]]:
        """``{"model": {...}, "data": {...}}``: the settings the checkpoint was trained with."""
        model = {k: v for k, v in (self.checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
        return {"model": model, "data": dict(self.checkpoint.get("datamodule_hyper_parameters") or {})}

    def own_config(self) -> list[str]:
        """``--config <run>/config.yaml`` (the run's whole configuration), when the checkpoint sits in a run folder."""
        config = self.run / "config.yaml" if self.run else None
        return ["--config", str(config)] if config and config.is_file() else []

    def refuse_changes(self, typed: dict[str, Any], data_too: bool) -> None:
        """Refuse typed ``model.*`` settings (and ``data.*`` ones, when training) that differ from the checkpoint's."""
        saved = self.saved
        diffs = [
            f"{flag(key)} {value!r} (the checkpoint has {saved[group][name]!r})"
            for key, value in typed.items()
            for group, name in [key.split(".", 1)]
            if name in saved[group]
            and name not in UNCHECKED
            and saved[group][name] != value
            and (group == "model" or data_too)
        ]
        if diffs:
            raise UserError(
                f"cannot use {self.path} with changed settings: {'; '.join(diffs)}. A run folder records "
                f"what it trained with: drop those options to use the checkpoint's, or start a new run "
                f"without --ckpt_path"
            )

    def apply(self, cfg, typed: dict[str, Any]) -> None:
        """Put the checkpoint's model and data settings into ``cfg`` wherever the user typed none."""
        for group, values in self.saved.items():
            for name, value in values.items():
                if f"{group}.{name}" not in typed and name in cfg[group] and name not in UNCHECKED:
                    cfg[group][name] = value
        cfg.seed_everything = cfg.data.seed

    def check_not_done(self, max_epochs: int | None, max_steps: int) -> None:
        """``NothingToDo`` when the run has trained as far as asked and holds all its outputs."""
        if self.run and finished(self.checkpoint, max_epochs, max_steps) and complete_outputs(self.run):
            raise NothingToDo(
                f"run {self.run} is complete ({self.checkpoint.get('global_step')} steps, {max_epochs} "
                f"epochs asked): nothing left to train and every file is as it was. To train longer, "
                f"resume with a larger --trainer.max_epochs"
            )


def flag(key: str) -> str:
    """The command-line flag of a ``model.*`` / ``data.*`` setting."""
    return "--seed_everything" if key == "data.seed" else f"--{key}"


def typed_settings(args: list[str], parsed, subcommand: str | None) -> dict[str, Any]:
    """The ``model.*`` / ``data.*`` settings typed in ``args`` (as options, or in a ``--config`` file already
    vetted), with the values ``parsed`` (the parsed configuration) gives them; ``--seed_everything`` is
    ``data.seed``."""
    names = set()
    for i, arg in enumerate(args):
        name = arg.split("=", 1)[0]
        if name.startswith(("--model.", "--data.")):
            names.add(name[2:])
        elif name == "--seed_everything":
            names.add("data.seed")
        elif name == "--config" and (path := arg.split("=", 1)[1] if "=" in arg else args[i + 1]):
            doc = yaml.safe_load(Path(path).read_text()) or {}
            doc = doc.get(subcommand, doc) if isinstance(doc, dict) else {}
            names |= {f"{g}.{k}" for g in ("model", "data") for k in (doc.get(g) or {})}
            names |= {"data.seed"} if "seed_everything" in doc else set()
    return {name: parsed[name] for name in names if name in parsed}
