"""d2l's softmax regression from scratch, as a PyTorch Lightning project.

Modules, in the chapter's order: ``data`` (Fashion-MNIST), ``functional`` (softmax, cross-entropy, accuracy),
``model`` (W, b, forward, the manual-SGD step), ``optim`` (the hand-written SGD), ``callbacks`` / ``figures``
(the chapter's pictures), ``cli`` (``scripts/train.py``).
"""

import ctypes
import sys


def _one_malloc_arena() -> None:
    """Keep glibc from parking ~175 MB in a worker thread's malloc arena after each figure redraw.

    Measured with ``scripts/train.py``: peak RSS swung between +0 and +175 MB from epoch to epoch once matplotlib
    rendered between epochs; one arena (``MALLOC_ARENA_MAX=1``) keeps it flat. Must run before torch starts threads.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX = -8
        except (OSError, AttributeError):
            pass


_one_malloc_arena()
