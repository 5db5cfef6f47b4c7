"""Measuring helpers shared by scripts/benchmark.py and the exercises: peak resident memory of this process."""

from __future__ import annotations

import os
import threading


class PeakRSS:
    """Samples this process's resident set size every 5 ms while the ``with`` block runs.

    ``peak_mb`` is the highest value seen; ``delta_mb`` the rise over the value at entry.
    """

    def __enter__(self) -> "PeakRSS":
        self.start = self._rss()
        self.peak, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20
