"""The chapter's notebook (notebooks/softmax_regression.py, jupytext), executed headless in a fresh kernel of this
environment exactly as scripts/build_notebook.py runs it; and the stored .ipynb, checked against its source."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks" / "softmax_regression.py"
STORED = SOURCE.with_suffix(".ipynb")
EPOCHS = 10  # the chapter's num_epochs


def load_builder():
    """scripts/build_notebook.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_notebook", ROOT / "scripts" / "build_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingClient(NotebookClient):
    """A ``NotebookClient`` that also keeps every message carrying a display id, in arrival order:
    ``(msg_type, display_id, cell_index, png)``. The executed notebook keeps only the last state of such a display."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.displays: list[tuple[str, str, int, str | None]] = []

    def process_message(self, msg, cell, cell_index):
        content = msg["content"]
        display_id = (content.get("transient") or {}).get("display_id")
        if display_id and msg["msg_type"] in ("display_data", "update_display_data"):
            self.displays.append((msg["msg_type"], display_id, cell_index, content["data"].get("image/png")))
        return super().process_message(msg, cell, cell_index)


def tagged(nb, tag: str):
    """The one code cell tagged ``tag``."""
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return cell


def text(cell, kind: str = "execute_result") -> str:
    """A cell's ``text/plain`` results (``kind="execute_result"``) or its stdout (``kind="stdout"``), joined."""
    if kind == "stdout":
        return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    return "".join(o.data["text/plain"] for o in cell.outputs if o.output_type == kind)


@pytest.fixture(scope="module")
def executed(tmp_path_factory, data_dir):
    """The notebook run top to bottom once, in notebooks/: ``(notebook, client, root)``, the run folders under root."""
    root = tmp_path_factory.mktemp("notebook_runs")
    nb, client = load_builder().execute(SOURCE, root_dir=root, client_class=RecordingClient)
    return nb, client, root


def test_kernel_is_this_environment():
    """The tests' ``python3`` kernel runs this interpreter (the project's .venv), not another Python on PATH."""
    assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable


def test_chapter_cells(executed):
    nb, _, _ = executed
    assert text(tagged(nb, "cross_entropy")) == "tensor([2.3026, 0.6931])"
    assert text(tagged(nb, "accuracy")) == "0.5"
    untrained = float(text(tagged(nb, "untrained_accuracy")))
    assert abs(untrained - 0.0328) < 0.002  # the number the text quotes: a random W is not an even guess (seed 0)


def test_the_chapters_plain_loop_and_lightning_end_with_the_same_numbers(executed):
    """The notebook's plain PyTorch train_ch3 and Trainer.fit, same seed and order: the same weights and curves."""
    nb, _, _ = executed
    out = text(tagged(nb, "loops_agree"), "stdout")
    gaps = dict(re.findall(r"(W|b|train loss|test acc) ([0-9.e+-]+)", out.splitlines()[-1]))
    assert set(gaps) == {"W", "b", "train loss", "test acc"}, out
    assert float(gaps["W"]) <= 1e-6 and float(gaps["b"]) <= 1e-6  # identical in practice (0 here)
    assert float(gaps["train loss"]) < 1e-5 and float(gaps["test acc"]) < 1e-6  # float32 metric sums
    assert len(out.splitlines()) == EPOCHS + 2  # a header, one row per epoch, the differences


def test_training_reaches_the_chapters_accuracy(executed):
    nb, _, root = executed
    out = text(tagged(nb, "test_accuracy"), "stdout")
    test_acc = float(re.search(r"^test_acc = (\d\.\d+)$", out, re.M).group(1))
    assert test_acc >= 0.82
    run = root / "lightning_logs" / "version_0"  # the run folder went to the temp root, not into the repository
    assert {"curves.png", "predictions.png", "weights.png", "confusion.png"} <= {p.name for p in run.iterdir()}


def test_live_curves_grow_in_one_display(executed):
    """``ChapterFigures`` shows the curves once (a ``display_data`` with a display id, after epoch 1) and replaces
    that same display after every later epoch (``update_display_data`` with that id): one new picture per epoch."""
    nb, client, _ = executed
    train = nb.cells.index(tagged(nb, "train"))
    msgs = [m for m in client.displays if m[2] == train]
    assert [m[0] for m in msgs[:1]] == ["display_data"]
    assert {m[1] for m in msgs} == {msgs[0][1]}  # a single display id: one figure, updated in place
    assert all(m[0] == "update_display_data" for m in msgs[1:])
    assert len(msgs) == EPOCHS  # the first display, then one update per later epoch
    frames = [m[3] for m in msgs]
    assert len(set(frames)) == EPOCHS  # each one a new picture
    images = [o for o in tagged(nb, "train").outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1 and images[0].data["image/png"] == frames[-1]  # the notebook keeps the last picture


def test_progress_bar_is_one_line_per_epoch(executed):
    nb, _, _ = executed
    lines = text(tagged(nb, "train"), "stdout").splitlines()
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert [line.split(":")[0] for line in epochs] == [f"Epoch {i}" for i in range(EPOCHS)]
    assert all("235/235" in line for line in epochs)
    assert len(lines) <= EPOCHS + 1  # Lightning's first, empty "Training" bar may stay above them
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_stored_notebook_is_the_executed_source():
    """The committed .ipynb has the .py's cells, executed in order, with outputs (scripts/build_notebook.py)."""
    source, stored = jupytext.read(SOURCE), nbformat.read(STORED, as_version=4)

    def cells(nb):
        return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]

    assert cells(stored) == cells(source), "notebooks/softmax_regression.ipynb is stale: run `make notebook-outputs`"
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert text(tagged(stored, "cross_entropy")) == "tensor([2.3026, 0.6931])"
    assert sum("image/png" in o.get("data", {}) for o in tagged(stored, "train").outputs) == 1
    assert not any(o.output_type == "error" for c in code for o in c.outputs)


def test_stored_results_are_what_a_run_computes(executed):
    """Every cell's result (``execute_result``) in the stored .ipynb equals this fresh run's, so the stored outputs
    cannot go stale when the package changes (progress-bar speeds and pictures are not compared)."""
    nb, _, _ = executed
    stored = nbformat.read(STORED, as_version=4)

    def results(notebook):
        return [text(c) for c in notebook.cells if c.cell_type == "code"]

    assert results(stored) == results(nb), "notebooks/softmax_regression.ipynb is stale: run `make notebook-outputs`"
