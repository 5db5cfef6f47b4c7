"""Run folders: ``<root>/lightning_logs/version_N``, picked atomically, locked while a process writes them.

A new run takes ``version_N`` by creating the folder exclusively, so two processes never share one. The writing
process holds an advisory ``flock`` on ``<run>/.lock`` (which also holds its PID, for messages): the kernel drops it
when the process ends, however it ends, so a lock is never stale. A start that fails before its first checkpoint
removes its folder again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

try:
    import fcntl  # POSIX advisory locks
except ImportError:  # Windows
    fcntl = None

from softmax_lightning.checkpoint import run_versions
from softmax_lightning.errors import UserError
from softmax_lightning.io import write_error

FIGURES = ("curves.png", "predictions.png", "weights.png", "confusion.png", "confusions.png")  # (the last three
# need a validation)
COMPLETE = ("metrics.json", "curves.png", "weights.png")  # what every finished run folder holds
OUTPUTS = ("train_loss", "train_acc", "test_loss", "test_acc")  # what a complete metrics.json holds at least


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
        self.made: list[Path] = []  # the folders above it that this process made too, deepest first
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
        raise UserError(
            f"run folder {run} is in use by process {pid} (it holds {run / cls.LOCK}); wait for that "
            f"run to end or stop it, then resume"
        )

    def create(self, logs: Path) -> int:
        """Make the next ``version_N`` under ``logs`` exclusively (two processes never get the same one); lock it."""
        folder, made = logs, []
        while not os.path.lexists(folder) and folder != folder.parent:
            made.append(folder)
            folder = folder.parent
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
            self._remove_empty(made)
            raise UserError(
                f"cannot create a run folder in {logs}: {e.strerror}; pass "
                f"--trainer.default_root_dir with a writable folder"
            ) from None
        self.path, self.created, self.made = logs / f"version_{n}", True, made
        self.lock()
        return n

    def use(self, run: Path) -> None:
        """Write into an existing run folder (a resumed run), after locking it."""
        self.path = run
        self.lock()

    def lock(self) -> None:
        lock = self.path / self.LOCK
        try:
            f = open(lock, "a+")  # noqa: SIM115 (held open, and locked, for the whole run; closed when it ends)
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
            kept = [
                p
                for p in self.path.rglob("*")
                if p.is_file() and p.name not in self.DEBRIS and not p.name.startswith("events.out.tfevents")
            ]
            if not kept:  # no checkpoint, figure or metrics: a start that failed before its first epoch ended
                shutil.rmtree(self.path, ignore_errors=True)
                self._remove_empty(self.made)  # (lightning_logs/ and the root folder, if this start made them)

    @staticmethod
    def _remove_empty(folders: list[Path]) -> None:
        """Remove ``folders`` (deepest first) while they are empty: another run may have started there meanwhile."""
        for folder in folders:
            try:
                folder.rmdir()
            except OSError:
                break


def complete_outputs(run: Path) -> bool:
    """Whether a run folder holds a complete ``metrics.json`` and the figures every run draws."""
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(metrics, dict) and all(k in metrics for k in OUTPUTS) and all((run / f).is_file() for f in COMPLETE)
    )
