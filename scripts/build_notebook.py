"""Execute the chapter's notebook in a fresh kernel and write the executed ``.ipynb`` beside its source.

    python scripts/build_notebook.py          # (or `make notebook-outputs`) notebooks/softmax_regression.py -> .ipynb

The source is the jupytext percent-format ``notebooks/softmax_regression.py``; the ``.ipynb`` holds what this run
printed and drew, nothing edited by hand. The kernel is this interpreter's ``python3`` kernel, started in
``notebooks/``; the run folders go to a temporary folder (``SOFTMAX_LIGHTNING_ROOT_DIR``), not into the repository.
Progress-bar redraws are collapsed to their final text (nbclient's ``coalesce_streams``), one line per epoch.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks" / "softmax_regression.py"
TARGET = SOURCE.with_suffix(".ipynb")
CELL_TIMEOUT = 600  # seconds per cell


def execute(
    source: Path = SOURCE, root_dir: str | Path | None = None, client_class: type[NotebookClient] = NotebookClient
) -> tuple[NotebookNode, NotebookClient]:
    """Run ``source`` top to bottom in a fresh ``python3`` kernel; return the executed notebook and its client.

    Args:
        source: the jupytext ``.py`` notebook.
        root_dir: where the notebook's ``Trainer`` puts ``lightning_logs/`` (``SOFTMAX_LIGHTNING_ROOT_DIR``); ``None``
            keeps the notebook's default, the repository root.
        client_class: a ``NotebookClient`` subclass, e.g. one that records the kernel's messages.
    """
    nb = jupytext.read(source)
    client = client_class(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        coalesce_streams=True,
        record_timing=False,
        resources={"metadata": {"path": str(source.parent)}},
    )
    env = dict(os.environ)
    if root_dir is not None:
        env["SOFTMAX_LIGHTNING_ROOT_DIR"] = str(root_dir)
    client.execute(env=env)
    for i, cell in enumerate(nb.cells):  # ids from the content, not random: a rebuild changes only what changed
        digest = hashlib.sha1(f"{cell.cell_type}{cell.source}".encode()).hexdigest()[:8]
        cell.id = digest if digest not in {c.id for c in nb.cells[:i]} else f"{digest}-{i}"
    return nb, client


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        nb, _ = execute(root_dir=tmp)
    nbformat.write(nb, TARGET)
    print(f"wrote {TARGET.relative_to(ROOT)} ({TARGET.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
