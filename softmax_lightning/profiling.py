"""Measuring helpers shared by scripts/benchmark.py and the exercises: peak resident memory of this process."""

from __future__ import annotations

import re
import sys


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or ``None``."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class PeakRSS:
    """Peak resident set size of this process while the ``with`` block runs, without a sampling thread.

    On Linux the kernel's high-water mark (``VmHWM``) is reset on entry (``/proc/self/clear_refs``) and read on
    exit, so the peak is exact and costs nothing while the block runs. Elsewhere ``peak_mb`` is the peak since the
    process started (``ru_maxrss``), an upper bound. ``delta_mb`` is the rise over the RSS at entry.
    """

    def __enter__(self) -> PeakRSS:
        self.start = (_status_kb("VmRSS") or 0) * 1024
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kb("VmHWM")
        if hwm is None:  # not Linux: the whole process's peak (kB on Linux, bytes on macOS)
            import resource  # POSIX only

            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak = maxrss if sys.platform == "darwin" else maxrss * 1024
        else:
            self.peak = hwm * 1024

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20
