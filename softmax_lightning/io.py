"""Safe file handling shared by the package and the scripts.

* Atomic writes: data goes to a temp file beside the target, then one rename, so a crash (even SIGKILL) never leaves a
  half-written ``metrics.json``, figure or checkpoint. Temp files left behind by a killed process are removed the next
  time anything is written to the same folder.
* Inputs: a file the user names (data, a config, a cost matrix, an image) must be a regular file (of bounded size,
  where the tool reads it whole), so that a FIFO or ``/dev/zero`` can never hang or fill memory.
* Errors: a failed write becomes one line that says where (and whether the disk is full), never a traceback.
* Pipes: a tool whose output goes into a pipe that closes early (``| head``) ends quietly with status 141, as
  ``cat`` and ``grep`` do (``exit_quietly_on_broken_pipe``).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from softmax_lightning.errors import UserError

_TMP = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>\d+)")
BROKEN_PIPE_STATUS = 128 + getattr(signal, "SIGPIPE", 13)  # 141: what a shell reports for `cat big | head -1`


def temp_path(path: Path) -> Path:
    """The temp file that an atomic write of ``path`` uses: hidden, beside it, named after this process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID may exist. On POSIX, signal 0 checks without sending anything; elsewhere
    (Windows, where ``os.kill`` would end the process) every PID counts as alive, so nothing is ever taken over."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: Path) -> None:
    """Delete ``.NAME.tmpPID`` files in ``folder`` whose process is gone (debris of a killed run)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        m = _TMP.fullmatch(p.name)
        if m and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)


def check_regular_file(path: Path, fix: str | None = None) -> bool:
    """Whether ``path`` exists; refuse (``UserError``) anything there that is not a regular file or a link to one.

    A FIFO or device would be read without end, and a folder or a broken link where a data file belongs is the
    user's: it is never replaced by a freshly unpacked copy.

    Args:
        fix: how to fix it, for the message (default: the advice for an IDX data file).
    """
    if not os.path.lexists(path):
        return False
    try:
        mode = os.stat(path).st_mode  # follows links
    except OSError:
        raise UserError(
            f"{path} is a broken link; {fix or 'point it at the IDX file (this tool never replaces it)'}"
        ) from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise UserError(
            f"{path} is {kind}, not a regular file; "
            f"{fix or 'put the IDX file there instead (this tool never replaces it)'}"
        )
    return True


def shown(path: str | Path, limit: int = 80) -> str:
    """``path`` for a message: as it is, or its start and end around an ellipsis when longer than ``limit``."""
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-(limit // 4) :]} ({len(text)} characters)"


def check_path(path: str | Path, flag: str, what: str = "path") -> Path:
    """``path`` as a ``Path``, if the system can look it up; refuse (``UserError``) an empty string, a name that is
    too long (``ENAMETOOLONG``), one with a NUL byte, or a loop of links. Whether anything is there is not checked.

    Args:
        flag: the option that named it, for the message (``--data.data_dir``).
        what: what the path is, for the message (``"folder"``).
    """
    if not str(path).strip():
        raise UserError(f"{flag} is an empty string; pass a {what}")
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (yet): the caller decides
        pass
    except ValueError:  # an embedded NUL byte
        raise UserError(f"{flag} {shown(repr(str(path)))} holds a NUL byte; pass a {what} without one") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise UserError(f"{flag} {shown(path)}: {e.strerror}; pass a shorter {what}") from None
        if e.errno == errno.ELOOP:
            raise UserError(f"{flag} {shown(path)}: {e.strerror}; fix the links or pass another {what}") from None
        # (anything else, e.g. a folder without permission, is for the caller, which says what it needed)
    return Path(path)


def write_error(path: str | Path, e: OSError) -> UserError:
    """One line for a failed write: where, why, and how to fix it (never "delete your data")."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"no space left on the device while writing {path}: nothing was overwritten; pick a folder "
            f"on a disk with room and run again"
        )
    return UserError(
        f"cannot write {path}: {e.strerror or e}; make {Path(path).parent} writable or pick another folder"
    )


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it over ``path`` in one step.

    Raises:
        UserError: the folder is not writable or the disk is full (the temp file is removed; ``path`` is untouched).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; name a file to write")
    if os.path.lexists(path) and not (path.is_file() or path.is_symlink()):  # a device or FIFO is never replaced
        raise UserError(f"{path} is not a regular file (a device, FIFO or socket); name a file to write")
    remove_stale_temp_files(path.parent)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: object) -> None:
    """Pretty JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def read_small_text(path: str | Path, what: str, flag: str, max_bytes: int = 1 << 20) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``; anything else is one ``UserError`` line.

    Args:
        path: the file the user named.
        what: what the file is, for messages ("config file").
        flag: the option that named it, for messages ("--config").
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(f"{what} {path}: {e.strerror}; pass an existing file with {flag}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is not a regular file (a folder, FIFO or device); pass a file with {flag}")
    if st.st_size > max_bytes:
        raise UserError(
            f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} this tool reads; "
            f"pass a smaller file with {flag}"
        )
    try:
        return path.read_bytes()[: max_bytes + 1].decode("utf-8")
    except OSError as e:
        raise UserError(f"{what} {path}: {e.strerror}; pass a readable file with {flag}") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte {e.start}); save it as plain text and pass it with {flag}"
        ) from None


def exit_quietly_on_broken_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a tool's ``main`` so that output into a closed pipe (``tool | head -1``) ends it quietly, returning 141.

    Python ignores SIGPIPE and raises ``BrokenPipeError`` on the next write instead; unhandled, that is a traceback,
    and even when handled, the interpreter's final flush of ``sys.stdout`` prints "Exception ignored ...". This is the
    recipe of Python's ``signal`` documentation ("Note on SIGPIPE"): flush inside ``try`` (``--help`` and short
    outputs sit in the buffer until then, and ``SystemExit`` passes through it), and on ``BrokenPipeError`` point
    stdout at ``os.devnull`` so that nothing is left to flush. 141 is 128 + SIGPIPE, the status a shell shows for a
    process that SIGPIPE ended (``cat``, ``grep``).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:
                sys.stdout.flush()
        except BrokenPipeError:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):  # stdout is no file descriptor (captured in a test): nothing to flush
                pass
            return BROKEN_PIPE_STATUS

    return wrapper
