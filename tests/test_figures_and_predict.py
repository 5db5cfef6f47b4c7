"""What a user sees: TensorBoard's hparams, histograms and images, the PNG figures, and scripts/predict.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.predict import load_checkpoint, load_image
from softmax_lightning.predict import main as predict_main
from tests.conftest import DATA_DIR, ROOT

FIGURES = {
    "curves.png": (320, 450),
    "predictions.png": None,
    "weights.png": None,
    "confusion.png": None,
    "confusions.png": None,
}


def test_event_files_hold_histograms_images_and_hparams(chapter_run):
    run = Path(chapter_run["run_dir"])
    ea = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("W", "b"):  # at the global step, as every scalar
        assert [e.step for e in ea.Histograms(tag)] == [235 * k for k in range(1, 11)]
    for tag in ("templates", "predictions", "confusion"):
        assert [e.step for e in ea.Images(tag)] == [235 * k for k in range(1, 11)]
    assert {"figures/weights", "figures/predictions", "figures/confusion", "figures/confusions"} <= set(tags["images"])
    for name in (
        "weights",
        "predictions",
        "confusion",
        "confusions",
    ):  # TensorBoard holds the very PNG files, with their size
        event = ea.Images(f"figures/{name}")[-1]
        png = (run / f"{name}.png").read_bytes()
        assert event.encoded_image_string == png
        assert (event.width, event.height) == Image.open(run / f"{name}.png").size
    plugin = ea.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugin and "_hparams_/session_start_info" in plugin
    start = plugin["_hparams_/session_start_info"].decode("latin-1")
    assert "lr" in start and "batch_size" in start
    assert b"val_acc" in plugin["_hparams_/experiment"] and b"test_acc" in plugin["_hparams_/experiment"]


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_png_figures_decode_and_are_not_blank(chapter_run, name):
    img = np.asarray(Image.open(Path(chapter_run["run_dir"]) / name).convert("L"))
    if FIGURES[name]:
        assert img.shape == FIGURES[name]
    assert img.shape[0] >= 200 and img.shape[1] >= 300
    background = np.bincount(img.ravel()).argmax()
    assert img.std() > 10 and (img != background).mean() > 0.05  # drawn content, not a blank canvas


def _run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/predict.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=180
    )


def test_predict_agrees_with_the_model_on_test_images(chapter_run, tmp_path):
    ckpt = chapter_run["checkpoint"]
    out = _run_predict(
        "--ckpt", ckpt, "--n", "16", "--json", "--data_dir", str(DATA_DIR), "--out", str(tmp_path / "p.png")
    )
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)["predictions"]
    model, _ = load_checkpoint(ckpt)
    dm = FashionMNISTDataModule(data_dir=str(DATA_DIR))
    dm.setup("test")
    X, y = dm.test_set.X, dm.test_set.y
    with torch.no_grad():
        probs = model(X[:16])
    names = [r["predicted"] for r in records]
    from softmax_lightning.data import CLASSES_EN

    assert names == [CLASSES_EN[k] for k in probs.argmax(1).tolist()]
    assert [r["true"] for r in records] == [CLASSES_EN[k] for k in y[:16].tolist()]
    assert all(abs(r["probability"] - float(p)) < 1e-3 for r, p in zip(records, probs.max(1).values))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_a_png_of_a_real_test_image_is_classified_like_the_tensor(chapter_run, tmp_path, capsys):
    dm = FashionMNISTDataModule(data_dir=str(DATA_DIR))
    dm.setup("test")
    X = dm.test_set.X
    model, _ = load_checkpoint(chapter_run["checkpoint"])
    for i in (0, 1, 7):
        exact, path = tmp_path / f"exact{i}.png", tmp_path / f"test{i}.png"
        pil = Image.fromarray((X[i, 0] * 255).round().byte().numpy())
        pil.save(exact)
        torch.testing.assert_close(load_image(exact), X[i, 0], rtol=0, atol=1 / 255 + 1e-6)  # lossless round trip
        pil.resize((112, 112), Image.Resampling.NEAREST).save(path)  # any size works; resampling blurs a little
        assert (load_image(path) - X[i, 0]).abs().mean() < 0.05
        with torch.no_grad():
            expected = int(model(X[i : i + 1]).argmax())
            assert int(model(load_image(path)[None]).argmax()) == expected
    assert predict_main(["--ckpt", chapter_run["checkpoint"], "--json", str(tmp_path / "test0.png")]) == 0
    rec = json.loads(capsys.readouterr().out)["predictions"][0]
    assert len(rec["top3"]) == 3 and rec["top3"][0]["probability"] >= rec["top3"][1]["probability"]


def _bad(tmp_path, chapter_run):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x04 definitely not a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"W": torch.zeros(100, 3), "b": torch.zeros(3)}, "hyper_parameters": {}}, foreign)
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    ok = chapter_run["checkpoint"]
    return {
        "no checkpoint found": (["--root_dir", str(tmp_path / "empty")], "pass --ckpt_path PATH"),
        "file missing": (["--ckpt", ok, str(tmp_path / "nope.png")], "not found"),
        "not an image": (["--ckpt", ok, str(not_image)], "not a readable image"),
        "corrupt checkpoint": (["--ckpt", str(corrupt)], "cannot be loaded safely"),
        "another model": (["--ckpt", str(foreign)], "(100, 3)"),
    }


def test_each_bad_input_gives_one_line_and_exit_2(chapter_run, tmp_path, capsys):
    """In this process (``tests/test_explain.py`` runs the tool as a real process for a bad input too)."""
    for case, (args, text) in _bad(tmp_path, chapter_run).items():
        before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        code = predict_main(args)
        err = capsys.readouterr().err
        assert code == 2, (case, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], (case, err)
        assert "Traceback" not in err
        assert before == {p: p.read_bytes() for p in before}  # nothing of the user's changed
