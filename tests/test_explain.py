"""Why this prediction: per-class evidence maps, the most confused pairs, ``predict.py --explain``, photos with light
backgrounds, and predict's command line (options checked first, closed pipes, JSON on stdout alone)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softmax_lightning import cli, figures, predict
from softmax_lightning.confusions import ConfusionExamples, most_confused_pairs
from softmax_lightning.data import CLASSES_EN, CLASSES_ZH, FashionMNISTDataModule
from softmax_lightning.functional import evidence, softmax
from tests.conftest import DATA_DIR, ONE_THREAD, ROOT, one_error_line, run_predict


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> Path:
    """One epoch of the chapter's recipe on the real data (test accuracy about 0.8): its run folder."""
    root = tmp_path_factory.mktemp("explain")
    assert (
        cli.main(
            [
                f"--trainer.default_root_dir={root}",
                f"--data.data_dir={DATA_DIR}",
                "--trainer.max_epochs=1",
                "--trainer.enable_progress_bar=false",
                "--trainer.limit_val_batches=2",
            ]
        )
        == 0
    )
    return root / "lightning_logs" / "version_0"


@pytest.fixture(scope="module")
def ckpt(run) -> Path:
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def test_set(data_dir):
    dm = FashionMNISTDataModule(data_dir=str(data_dir))
    dm.setup("test")
    return dm.test_set.X, dm.test_set.y  # (10000, 1, 28, 28) in [0, 1], (10000,)


def predict_main(capsys, *args) -> tuple[int, str, str]:
    code = predict.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------ the math
def test_evidence_maps_sum_to_the_models_logits_on_real_test_images(ckpt, test_set):
    model, stats = predict.load_checkpoint(ckpt)
    X = test_set[0][:512]
    E = evidence(X, model.W.detach())
    assert E.shape == (512, 10, 28, 28)
    with torch.no_grad():
        logits = model.logits(X)
    torch.testing.assert_close(E.sum((2, 3)) + model.b.detach(), logits, rtol=1e-5, atol=1e-4)
    assert logits.abs().max() > 1  # a trained model: the check compares numbers of some size
    n, k, r, c = 7, 6, 14, 9  # one term by hand: pixel (r, c) of image n times class k's weight for that pixel
    assert E[n, k, r, c] == X[n, 0, r, c] * model.W[r * 28 + c, k]
    assert (E[X[:, 0].eq(0)[:, None].expand_as(E)] == 0).all()  # black pixels are no evidence for anything


# -------------------------------------------------------------------------------- the most confused pairs
def test_most_confused_pairs_counts_both_directions():
    m = torch.diag(torch.full((10,), 900))
    m[6, 0], m[0, 6] = 60, 50  # 110 together: first, although 2 -> 4 alone is larger
    m[2, 4], m[4, 2] = 100, 0
    m[4, 6], m[6, 4] = 30, 45  # 75, 6 -> 4 the larger direction
    m[9, 7] = 20
    assert most_confused_pairs(m) == [(6, 0), (2, 4), (6, 4)]
    assert most_confused_pairs(m, k=5) == [(6, 0), (2, 4), (6, 4), (9, 7)]  # never-confused pairs left out
    assert most_confused_pairs(torch.diag(torch.ones(10))) == []


def test_confusion_examples_keep_the_first_mistakes_of_each_pair_in_bounded_memory():
    gen = torch.Generator().manual_seed(0)
    keep, seen = ConfusionExamples(per_pair=3), {}
    for _ in range(40):
        X = torch.rand(64, 1, 28, 28, generator=gen)
        y, preds = torch.randint(0, 10, (64,), generator=gen), torch.randint(0, 10, (64,), generator=gen)
        preds[:20] = y[:20]  # some right
        keep.update(X, y, preds)
        for x, t, p in zip(X, y.tolist(), preds.tolist()):
            if t != p:
                seen.setdefault((t, p), []).append(x[0])
    examples = keep.examples
    assert set(examples) == set(seen) and len(examples) == 90  # every mistake pair, no right prediction
    for pair, images in examples.items():
        assert images.shape == (3, 28, 28)
        torch.testing.assert_close(images, torch.stack(seen[pair][:3]), rtol=0, atol=0)  # the first three, in order
    buf = io.BytesIO()
    torch.save(keep.state_dict(), buf)
    buf.seek(0)
    again = ConfusionExamples()
    again.load_state_dict(torch.load(buf, weights_only=True))  # plain tensors: a safe checkpoint can hold them
    assert again.per_pair == 3 and all(torch.equal(again.examples[p], examples[p]) for p in examples)
    keep.reset()
    assert keep.examples == {}


def _png_array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


@pytest.mark.parametrize("labels", ["en", "zh"])
def test_plot_confusions_from_real_validation_batches(ckpt, test_set, labels):
    model, _ = predict.load_checkpoint(ckpt)
    X, y = test_set
    keep, matrix = ConfusionExamples(), torch.zeros(10, 10, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(y), 256):  # as the validation loop feeds them
            preds = model.logits(X[i : i + 256]).argmax(1)
            keep.update(X[i : i + 256], y[i : i + 256], preds)
            matrix.index_put_((y[i : i + 256], preds), torch.ones_like(preds), accumulate=True)
    pairs = most_confused_pairs(matrix)
    assert len(pairs) == 3 and all(matrix[a, b] + matrix[b, a] > 50 for a, b in pairs)
    fig = figures.plot_confusions(model.W, pairs, keep.examples, labels, matrix=matrix)
    texts = [t.get_text() for sub in fig.subfigs for ax in sub.axes for t in (ax.title, ax._left_title)]
    names = CLASSES_ZH if labels == "zh" else CLASSES_EN
    a, b = pairs[0]
    assert any(names[a] in t and names[b] in t and str(int(matrix[a, b])) in t for t in texts)
    img = _png_array(figures.save_png(fig))
    assert img.shape[0] > 700 and img.shape[1] > 600 and img.std() > 30


def test_curves_plot_names_the_validation_curve(tmp_path):
    plot = figures.CurvesPlot(3, val_label="test acc")
    assert [line.get_label() for line in plot.lines] == ["train loss", "train acc", "test acc"]
    assert [line.get_label() for line in figures.CurvesPlot(3).lines][-1] == "val acc"
    plot.save([{"epoch": 1, "train_loss": 0.8, "train_acc": 0.7, "val_acc": 0.75}], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------ predict.py --explain
def test_explain_png_beside_predictions_png_in_the_run_folder(run, ckpt, capsys):
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--data.data_dir", DATA_DIR, "--explain")
    assert code == 0, err
    folder = run / "predict"
    assert {p.name for p in folder.iterdir()} == {"predictions.png", "explain.png"}
    assert f"checkpoint: {ckpt}" in err.splitlines()[0]
    assert f"wrote {folder / 'explain.png'}" in err and "the first 8 images" in err  # 16 classified, 8 explained
    eight = np.asarray(Image.open(folder / "explain.png").convert("L"))
    assert eight.shape[1] >= 1000 and eight.std() > 30
    code, out, err = predict_main(
        capsys,
        "--ckpt_path",
        ckpt,
        "--data.data_dir",
        DATA_DIR,
        "--explain",
        "--explain-rows",
        2,
        "--n",
        2,
        "--labels",
        "zh",
    )
    assert code == 0, err
    two = np.asarray(Image.open(folder / "explain.png").convert("L"))
    assert two.shape[1] == eight.shape[1] and 2.5 < eight.shape[0] / two.shape[0] < 4.5  # rows: 8 vs 2


def test_explain_figure_titles_carry_logits_and_probabilities(ckpt, test_set):
    model, _ = predict.load_checkpoint(ckpt)
    X, y = test_set[0][:2], test_set[1][:2]
    with torch.no_grad():
        logits = model.logits(X)
    for labels, word in (("en", "true: "), ("zh", "真实：")):
        fig = figures.plot_explain(X, logits, evidence(X, model.W.detach()), labels, trues=y)
        titles = [ax.get_title() for ax in fig.axes]
        k = int(logits[0].argmax())
        p = float(softmax(logits[:1])[0, k])
        names = CLASSES_ZH if labels == "zh" else CLASSES_EN
        assert any(names[k] in t and f"{float(logits[0, k]):.1f}" in t and f"{p:.2f}" in t for t in titles), titles
        assert any(word + names[int(y[0])] in t for t in titles)
        maps = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "bwr"]
        assert len(maps) == 6 and all(im.norm.vmin == -im.norm.vmax for im in maps)  # 2 rows of 3, symmetric


def test_explain_beside_out_and_json_names_the_files(ckpt, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "grid.png"  # missing folders are made
    code, stdout, err = predict_main(
        capsys, "--ckpt_path", ckpt, "--data.data_dir", DATA_DIR, "--n", 4, "--explain", "--json", "--out", out
    )
    assert code == 0 and err == ""
    report = json.loads(stdout)
    assert report["checkpoint"] == str(ckpt)
    assert report["figures"] == {"predictions": str(out), "explain": str(out.with_name("explain.png"))}
    assert out.is_file() and out.with_name("explain.png").is_file()
    model, _ = predict.load_checkpoint(ckpt)
    for r in report["predictions"]:
        logits = torch.tensor([r["logits"][name] for name in CLASSES_EN])
        probs = softmax(logits[None])[0]
        assert r["predicted"] == CLASSES_EN[int(logits.argmax())]
        assert abs(float(probs.max()) - r["probability"]) < 1e-3


# ---------------------------------------------------------------------------------------- your own photos
def photo_of(image: torch.Tensor, path: Path, side: int = 280, margin: int = 0) -> Path:
    """A "photo" of a test image: inverted (a dark garment on white), enlarged to ``side`` pixels, on a white canvas
    ``margin`` pixels wider on each side, saved as RGB (PNG or JPEG by the suffix)."""
    dark = Image.fromarray(((1 - image) * 255).round().byte().numpy()).resize((side, side), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (side + 2 * margin, side + 2 * margin), 255)
    canvas.paste(dark, (margin, margin))
    canvas.convert("RGB").save(path)
    return path


def test_a_dark_on_white_photo_is_inverted_and_classified_like_the_test_image(ckpt, test_set, tmp_path, capsys):
    model, _ = predict.load_checkpoint(ckpt)
    X = test_set[0]
    idx = [0, 1, 2, 7, 9]
    photos = [photo_of(X[i, 0], tmp_path / f"photo{i}.{'jpg' if i % 2 else 'png'}") for i in idx]
    for i, path in zip(idx, photos):
        seen = predict.load_photo(path)  # automatic
        assert seen.inverted and seen.background > 0.95
        assert (seen.image - X[i, 0]).abs().mean() < 0.05  # the test image again, up to resampling
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--json", *photos)
    assert code == 0 and err == ""
    records = json.loads(out)["predictions"]
    with torch.no_grad():
        expected = [CLASSES_EN[k] for k in model.logits(X[idx]).argmax(1).tolist()]
    assert [r["predicted"] for r in records] == expected
    assert all(r["inverted"] is True and r["background"] > 0.95 for r in records)
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, *photos)  # table mode: one note per inverted photo
    assert code == 0
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == len(photos) and all(
        str(p) in n and "inverted" in n and "--no-invert" in n for p, n in zip(photos, notes)
    )
    assert f"checkpoint: {ckpt}" in err
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--json", "--no-invert", photos[0])
    assert code == 0 and json.loads(out)["predictions"][0]["inverted"] is False
    original = tmp_path / "original.png"  # light on black, as the data set: left alone, unless forced
    Image.fromarray((X[0, 0] * 255).round().byte().numpy()).save(original)
    assert not predict.load_photo(original).inverted and predict.load_photo(original, invert=True).inverted
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--invert", original)
    assert code == 0 and f"note: {original}: inverted (--invert)" in err


def test_explain_png_of_photos_shows_the_input_the_model_saw(ckpt, test_set, tmp_path, capsys):
    photo = photo_of(test_set[0][3, 0], tmp_path / "shirt.png", margin=40)
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--explain", "--out", tmp_path / "figs" / "x.png", photo)
    assert code == 0, err
    assert not (tmp_path / "figs" / "x.png").exists()  # no grid for photos (no true classes)
    explain = tmp_path / "figs" / "explain.png"
    assert explain.is_file() and f"wrote {explain}" in err
    fig = figures.plot_explain(*_photo_inputs(ckpt, photo))
    shown = fig.axes[0].get_images()[0].get_array()
    torch.testing.assert_close(torch.as_tensor(np.asarray(shown)), predict.load_photo(photo).image)


def _photo_inputs(ckpt, photo):
    model, stats = predict.load_checkpoint(ckpt)
    x = predict.load_photo(photo).image[None]
    with torch.no_grad():
        return x, model.logits(x), evidence(x, model.W.detach())


def test_zh_table_columns_line_up(ckpt, capsys):
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--data.data_dir", DATA_DIR, "--labels", "zh")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 16 and any(c in out for c in CLASSES_ZH)
    ends = {predict.display_width(line[: line.index(".") + 4]) for line in rows}  # where each p value ends
    assert len(ends) == 1, out
    header = out.splitlines()[0]
    assert predict.display_width(header) == ends.pop()  # "p" heads its column
    assert predict.display_width("T恤") == 3 and predict.pad("包", 4) == "包  "


# ----------------------------------------------------------------------------- the command line, robust
def test_json_into_a_closed_pipe_ends_quietly(ckpt, tmp_path):
    """``predict.py --json --n 3000 | head -c 100``: nothing on stderr, status 141 (or 0 if it all fit)."""
    pred = subprocess.Popen(
        [
            sys.executable,
            "scripts/predict.py",
            "--ckpt_path",
            str(ckpt),
            "--data.data_dir",
            str(DATA_DIR),
            "--json",
            "--n",
            "3000",
            "--out",
            str(tmp_path / "p.png"),
        ],
        cwd=ROOT,
        env=ONE_THREAD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.run(["head", "-c", "100"], stdin=pred.stdout, capture_output=True, timeout=180)
    pred.stdout.close()  # only head holds the pipe's read end: when it exits, the pipe is closed
    err = pred.stderr.read().decode()
    assert pred.wait(timeout=180) in (141, 0) and err == ""
    assert head.stdout.startswith(b'{\n "checkpoint"') and len(head.stdout) == 100


def test_help_and_table_into_a_closed_pipe_end_quietly(ckpt, tmp_path):
    for args in (
        ["--help"],
        ["--ckpt_path", str(ckpt), "--data.data_dir", str(DATA_DIR), "--n", "3000", "--out", str(tmp_path / "p.png")],
    ):
        res = subprocess.run(
            f'{sys.executable} scripts/predict.py {" ".join(args)} | head -1; echo "status ${{PIPESTATUS[0]}}" >&2',
            shell=True,
            executable="/bin/bash",
            cwd=ROOT,
            env=ONE_THREAD,
            capture_output=True,
            text=True,
            timeout=180,
        )
        status = res.stderr.splitlines()[-1]
        assert status in ("status 141", "status 0"), res.stderr
        assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
        assert len(res.stdout.splitlines()) == 1
        if args == ["--help"]:
            assert res.stderr.splitlines() == [status] and res.stdout.startswith("usage:")
        else:
            assert status == "status 141"  # 3000 rows never fit the pipe's buffer


def test_broken_pipe_helper_in_process(monkeypatch):
    from softmax_lightning.io import BROKEN_PIPE_STATUS, exit_quietly_on_broken_pipe

    r, w = os.pipe()
    os.close(r)
    stdout = os.fdopen(w, "w")
    monkeypatch.setattr(sys, "stdout", stdout)

    @exit_quietly_on_broken_pipe
    def tool() -> int:
        print("x" * 100_000)
        return 0

    assert tool() == BROKEN_PIPE_STATUS == 141
    stdout.write("more")  # stdout now points at os.devnull: later writes and the final flush are harmless
    stdout.flush()
    stdout.close()


@pytest.fixture
def read_only_dir(tmp_path) -> Path | None:
    """A folder this process cannot write into (``None`` when running as root, who can write anywhere)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    yield None if os.access(d, os.W_OK) else d
    d.chmod(0o755)


def bad_options(tmp_path: Path, read_only: Path | None) -> dict[str, tuple[list, str]]:
    folder, photo = tmp_path / "folder", tmp_path / "photo.png"
    folder.mkdir(exist_ok=True)
    Image.new("L", (30, 30), 200).save(photo)
    (tmp_path / "file").write_text("x")
    cases = {
        "n zero": (["--n", 0], "--n"),
        "n too big": (["--n", 10_001], "--n"),
        "n not a number": (["--n", "many"], "--n"),
        "n with photos": (["--n", 3, photo], "--n"),
        "rows zero": (["--explain", "--explain-rows", 0], "--explain-rows"),
        "rows too many": (["--explain", "--explain-rows", 33], "--explain-rows"),
        "rows without explain": (["--explain-rows", 3], "--explain"),
        "out is a folder": (["--out", folder], "--out"),
        "out under a file": (["--out", tmp_path / "file" / "p.png"], "--out"),
        "out empty": (["--out", ""], "--out"),
        "out is where explain goes": (["--explain", "--out", tmp_path / "explain.png"], "--out"),
        "out with photos": (["--out", tmp_path / "p.png", photo], "--out"),
        "image empty": ([""], "empty"),
        "image missing": ([tmp_path / "missing.jpg"], "missing.jpg"),
        "image is a folder": ([folder], "folder"),
        "invert without photos": (["--invert"], "--invert"),
        "ckpt empty": (["--ckpt_path", ""], "--ckpt_path"),
        "data dir empty": (["--data.data_dir", ""], "--data.data_dir"),
        "reject out of range": (["--reject-below", 2], "--reject-below"),
    }
    if read_only is not None:
        cases["out in a read-only folder"] = (["--out", read_only / "sub" / "p.png"], str(read_only))
    return cases


def test_every_option_is_checked_before_the_checkpoint_is_loaded(tmp_path, read_only_dir, capsys):
    """A missing checkpoint and a missing data folder: any check made after loading would report those instead."""
    missing = ["--ckpt_path", tmp_path / "no.ckpt", "--data.data_dir", tmp_path / "no_data"]
    for case, (args, fragment) in bad_options(tmp_path, read_only_dir).items():
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        argv = [str(a) for a in (args if case == "ckpt empty" else [*missing, *args])]
        try:
            code = predict.main(argv)
        except SystemExit as e:  # argparse's own checks ("n not a number"): one line too, then exit 2
            code = e.code
        out, err = capsys.readouterr()
        line = one_error_line(err, fragment)
        assert code == 2 and out == "", case
        assert "no.ckpt" not in line and "no_data" not in line, (case, line)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, case  # nothing made


def test_an_empty_ckpt_path_as_a_process_is_one_line(tmp_path):
    res = run_predict("--ckpt_path", "", "--n", "1")
    assert res.returncode == 2 and "--ckpt_path" in one_error_line(res.stderr) and res.stdout == ""
