"""Checkpoints: found, loaded without running code, checked, and written atomically.

A ``.ckpt`` file is a pickle, and unpickling can run any code the file carries. Every load in this project goes
through ``torch.load(weights_only=True)``, which accepts tensors and plain containers only, and a file that fails
it is refused in one line.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import atomic_write_bytes, check_regular_file, write_error

LOGS = "lightning_logs"  # Lightning's run layout: <root>/lightning_logs/version_N/checkpoints/last.ckpt


def run_versions(root: str | Path) -> dict[int, Path]:
    """``{N: folder}`` of the ``version_N`` run folders under ``<root>/lightning_logs``."""
    runs = {}
    for folder in (Path(root) / LOGS).glob("version_*"):
        if (m := re.fullmatch(r"version_(\d+)", folder.name)) and folder.is_dir():
            runs[int(m.group(1))] = folder
    return runs


def newest_checkpoint(root: str | Path, flag: str = "--ckpt_path") -> Path:
    """The ``last.ckpt`` of the highest-numbered run under ``<root>/lightning_logs`` that has one.

    Args:
        flag: the option of the calling tool that takes a checkpoint path, for the message.
    """
    runs = [(n, p / "checkpoints" / "last.ckpt") for n, p in run_versions(root).items()]
    runs = [(n, ckpt) for n, ckpt in runs if ckpt.is_file()]
    if not runs:
        raise UserError(
            f"no checkpoint found: no {Path(root) / LOGS}/version_*/checkpoints/last.ckpt; train one "
            f"with `python scripts/train.py` first, or pass {flag} PATH"
        )
    return max(runs)[1]


def run_folder_of(ckpt: Path) -> Path | None:
    """The run folder a checkpoint belongs to (``.../version_N`` for ``.../version_N/checkpoints/x.ckpt``)."""
    run = ckpt.resolve().parent.parent
    return run if ckpt.resolve().parent.name == "checkpoints" and re.fullmatch(r"version_\d+", run.name) else None


def read_checkpoint(path: str | Path, flag: str = "--ckpt_path") -> dict[str, Any]:
    """Load a ``SoftmaxRegression`` checkpoint safely (``weights_only=True``) and check its weights.

    Raises:
        UserError: the file is missing, not a regular file, damaged, not a checkpoint of this model, holds anything but
            tensors and plain data (e.g. code), or holds non-finite weights.
    """
    path = Path(path)
    if not check_regular_file(path, fix=f"pass {flag} with a .ckpt file written by scripts/train.py (or 'last')"):
        raise UserError(f"checkpoint {path} not found; pass {flag} with the path of a .ckpt file (or 'last')")
    try:
        with warnings.catch_warnings():  # a damaged file can also make torch warn: the one line below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - damaged, truncated, or refused by the safe unpickler
        reason = one_line(e, 120)
        raise UserError(
            f"checkpoint {path} cannot be loaded safely ({type(e).__name__}: {reason}); it is damaged, "
            f"not a checkpoint, or holds more than weights; pass {flag} with a .ckpt written by "
            f"scripts/train.py"
        ) from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    W, b = (state.get("W"), state.get("b")) if isinstance(state, dict) else (None, None)
    if not (isinstance(W, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise UserError(
            f"checkpoint {path} is not a SoftmaxRegression checkpoint (no W and b); pass {flag} with a "
            f".ckpt written by scripts/train.py"
        )
    if W.ndim != 2 or b.shape != (W.shape[1],):
        raise UserError(
            f"checkpoint {path} holds W of shape {tuple(W.shape)} and b of shape {tuple(b.shape)}, "
            f"which do not fit together; pass {flag} with a .ckpt written by scripts/train.py"
        )
    if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
        raise UserError(
            f"checkpoint {path} holds non-finite weights (nan or inf): its training diverged; pass "
            f"{flag} with an earlier checkpoint, or train again with `python scripts/train.py --model.lr "
            f"SMALLER`"
        )
    return ckpt


def epochs_done(ckpt: dict[str, Any]) -> int:
    """How many epochs had finished when the checkpoint was written: its ``epoch`` is the index of the epoch it was
    saved in, and this project's checkpoints are saved at the end of an epoch."""
    return int(ckpt.get("epoch", -1)) + 1


def finished(ckpt: dict[str, Any], max_epochs: int | None, max_steps: int) -> bool:
    """Whether a run resumed from ``ckpt`` with these limits would have nothing left to train."""
    if max_steps is not None and max_steps >= 0 and ckpt.get("global_step", 0) >= max_steps:
        return True
    return max_epochs is not None and max_epochs >= 0 and epochs_done(ckpt) >= max_epochs


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file beside the target, then rename: a kill never leaves a partial ``.ckpt``, and
    a full disk leaves the previous checkpoint intact (one ``UserError`` line instead of a traceback).

    (Lightning's default goes through fsspec, whose temp file lives in the system temp folder; when that is another
    filesystem, the final move is a copy, which a kill can interrupt.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(path, e) from None
        atomic_write_bytes(path, buf.getvalue())
