"""Hostile inputs (issue 12, "Reliability, second pass"): crafted checkpoints, full disks, special files, huge or odd
images, degenerate data, crash debris, and hints that name flags the tool accepts.

Every refusal is one ``error:`` line and exit code 2, with nothing of the user's changed. Promises about a process
(exit code, no traceback, no hang, no code run) are checked on a real ``scripts/*.py`` subprocess; the rest call
the tools' ``main`` in-process, inside ``bounded()`` where a regression could hang or eat memory, so that it fails
the test instead of the machine.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shlex
import stat
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from softmax_lightning import cli, exercises, predict
from softmax_lightning import fashion_mnist as data
from softmax_lightning.checkpoint import read_checkpoint
from softmax_lightning.errors import UserError
from tests.conftest import (
    DATA_DIR,
    ONE_THREAD,
    ROOT,
    bounded,
    craft_checkpoint,
    one_error_line,
    run_predict,
    write_fake_split,
    write_idx,
)

SYSTEM_GZ = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
IDX_NAMES = [n for pair in data.SPLIT_FILES.values() for n in pair]
NO_DELETE_ADVICE = re.compile(r"\b(delete|remove|rm|free|erase|clean)\b", re.I)


# ----------------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """One cheaply trained checkpoint for the whole file (20 batches of the real data)."""
    root = tmp_path_factory.mktemp("trained")
    assert (
        cli.main(
            [
                f"--trainer.default_root_dir={root}",
                f"--data.data_dir={DATA_DIR}",
                "--trainer.enable_progress_bar=false",
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=20",
                "--trainer.limit_val_batches=2",
            ]
        )
        == 0
    )
    path = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """A data_dir with four small valid IDX files (64 train, 32 test images)."""
    d = tmp_path_factory.mktemp("fake_data")
    write_fake_split(data.raw_dir(d))
    return d


@pytest.fixture(scope="module")
def small_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "shirt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def pids():
    """``(dead, alive)``: the PID of a process that has exited and of one that still runs."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "120"])
    assert not Path(f"/proc/{dead.pid}").exists()
    yield dead.pid, alive.pid
    alive.kill()
    alive.wait()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def predict_main(capsys, *args) -> tuple[int, str, str]:
    """``scripts/predict.py``'s main in-process: ``(exit code, stdout, stderr)``."""
    code = predict.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def png_bytes(width: int, height: int, rows: bytes | None = None, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG file built by hand: the header may claim any size; ``rows`` (filter byte + pixels per row) default to
    one black row, so a huge claimed image costs a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"\0" * (width + 1) if rows is None else rows
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def flags_in(line: str) -> set[str]:
    """The command-line options a message names (``--ckpt_path``, ``--data.data_dir``, ...)."""
    return set(re.findall(r"(?<![\w-])--[a-z][\w.-]*\w", line))


def plant(path: Path, kind: str) -> None:
    """Put something that is not a regular file where a file belongs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "broken_link":
        path.symlink_to(path.parent / "no-such-target")
    elif kind == "link_to_dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
        except PermissionError:
            path.symlink_to("/dev/null")  # the same to the reader
    else:
        raise ValueError(kind)


def describe(path: Path) -> tuple:
    """What is at ``path``, without opening it: (is a link, link target, file type)."""
    st = os.lstat(path)
    return (path.is_symlink(), os.readlink(path) if path.is_symlink() else None, stat.S_IFMT(st.st_mode))


def listing(folder: Path) -> dict[str, tuple]:
    return {p.name: describe(p) for p in folder.iterdir()}


def write_gz_split(raw: Path, n_train: int = 64, n_test: int = 32) -> dict[str, str]:
    """The four IDX files as ``.gz`` only (as torchvision leaves them after a download); returns their sha256."""
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), gz=True)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), gz=True)
    return {p.name: sha256(p) for p in raw.glob("*.gz")}


# ------------------------------------------------------------------------------- 1. a crafted checkpoint never runs
def test_crafted_checkpoint_is_armed(tmp_path, ckpt):
    """The payload is real: an unsafe load of the crafted file does run it (so the tests below can fail)."""
    marker = tmp_path / "MARKER"
    crafted = craft_checkpoint(ckpt, tmp_path / "crafted.ckpt", marker)
    loaded = torch.load(crafted, map_location="cpu", weights_only=False)  # the one unsafe load: the test's own file
    assert marker.exists() and loaded["state_dict"]["W"].shape == (784, 10)


def test_crafted_checkpoint_via_ckpt_path_does_not_run(tmp_path, ckpt, fake_data):
    marker = tmp_path / "MARKER"
    crafted = craft_checkpoint(ckpt, tmp_path / "crafted.ckpt", marker)
    before = sha256(crafted)
    res = run_predict("--ckpt_path", crafted, "--data.data_dir", fake_data, "--out", tmp_path / "p.png")
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and str(crafted) in line and "--ckpt_path" in line
    assert not marker.exists(), "the checkpoint's code ran"
    assert sha256(crafted) == before and not (tmp_path / "p.png").exists()


def test_crafted_checkpoint_planted_as_newest_run_does_not_run(tmp_path, ckpt, fake_data):
    """No flag: predict picks ``lightning_logs/version_9/checkpoints/last.ckpt``, the newest run, and refuses it."""
    root, marker = tmp_path / "root", tmp_path / "MARKER"
    good = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    good.parent.mkdir(parents=True)
    good.write_bytes(ckpt.read_bytes())
    crafted = craft_checkpoint(ckpt, root / "lightning_logs" / "version_9" / "checkpoints" / "last.ckpt", marker)
    before = {p: sha256(p) for p in (good, crafted)}
    res = run_predict("--root_dir", root, "--data.data_dir", fake_data)
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and str(crafted) in line
    assert not marker.exists(), "the checkpoint's code ran"
    assert {p: sha256(p) for p in before} == before
    assert not (root / "lightning_logs" / "version_9" / "predict").exists()  # nothing written for it


def test_crafted_checkpoint_refused_by_the_shared_loader(tmp_path, ckpt):
    """``read_checkpoint`` (also train.py's resume path) refuses it in one line, in-process too."""
    marker = tmp_path / "MARKER"
    crafted = craft_checkpoint(ckpt, tmp_path / "crafted.ckpt", marker)
    with pytest.raises(UserError, match="cannot be loaded safely") as e:
        read_checkpoint(crafted)
    assert "\n" not in str(e.value) and not marker.exists()


# ------------------------------------------------------------------------------- 2. a full disk while unpacking
def test_unpacking_debian_files_onto_a_full_disk_for_real(tmp_path, ckpt):
    """A 1 MB tmpfs as --data.data_dir: unpacking Debian's 26 MB train-images .gz runs out of space for real."""
    gz = [SYSTEM_GZ / f"{n}.gz" for n in IDX_NAMES]
    if not all(p.is_file() for p in gz):
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({SYSTEM_GZ})")
    mnt, report = tmp_path / "full", tmp_path / "report"
    mnt.mkdir(), report.mkdir()
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(mnt))}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(
            f"cannot mount a 1 MB tmpfs in a new user+mount namespace here (unshare -rm: "
            f"{probe.stderr.strip()[:200]}); test_unpacking_onto_a_full_disk_in_process covers the code path"
        )
    sums = {p: sha256(p) for p in gz}
    raw = data.raw_dir(mnt)
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {q(mnt)} || exit 99; "
        f"{q(sys.executable)} scripts/predict.py --ckpt_path {q(ckpt)} --data.data_dir {q(mnt)} "
        f"--out {q(report / 'p.png')} 2> {q(report / 'stderr')}; echo $? > {q(report / 'rc')}; "
        f"ls -A {q(raw)} > {q(report / 'ls')}"
    )  # what the full disk holds afterwards, seen from inside
    res = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr
    line = one_error_line((report / "stderr").read_text())
    assert (report / "rc").read_text().strip() == "2"
    assert "no space left" in line and str(raw / "train-images-idx3-ubyte") in line  # where space ran out
    assert not NO_DELETE_ADVICE.search(line), line
    assert (report / "ls").read_text().split() == []  # no partial file, no temp file
    assert {p: sha256(p) for p in gz} == sums  # the .gz files are intact
    assert not (report / "p.png").exists()


def test_unpacking_onto_a_full_disk_in_process(tmp_path, ckpt, capsys, monkeypatch):
    """The same, with our module's copy step made to fill the disk after writing part of the file."""
    raw = data.raw_dir(tmp_path / "data")
    sums = write_gz_split(raw)
    gz_names = set(sums)

    def full_disk(fin, fout, length=0):
        fout.write(fin.read(1000))  # a partial file on disk...
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data, "shutil", SimpleNamespace(copyfileobj=full_disk))
    code, out, err = predict_main(
        capsys, "--ckpt_path", ckpt, "--data.data_dir", raw.parents[1], "--json", "--out", tmp_path / "p.png"
    )
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert "no space left" in line and str(raw / "train-images-idx3-ubyte") in line and "--data.data_dir" in line
    assert not NO_DELETE_ADVICE.search(line), line
    assert {p.name for p in raw.iterdir()} == gz_names  # ...is gone, and no temp file is left
    assert {p.name: sha256(p) for p in raw.glob("*.gz")} == sums


# ------------------------------------------------------------------------------- 3. never replace a user's file
HOSTILE = ["broken_link", "link_to_dev_zero", "fifo", "device"]


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("where", ["idx", "gz"])
def test_special_file_where_data_belongs_is_refused_untouched(tmp_path, ckpt, capsys, kind, where):
    """``idx``: the unpacked file is odd (and its .gz is there too, ready to be unpacked over it); ``gz``: only .gz
    files, one of them odd. Refused in one line naming it, never read, never replaced."""
    d = tmp_path / "data"
    raw = data.raw_dir(d)
    if where == "idx":
        write_fake_split(raw)
        target = raw / "t10k-images-idx3-ubyte"
        write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((32, 28, 28)), gz=True)
        target.unlink()
    else:
        write_gz_split(raw)
        target = raw / "t10k-images-idx3-ubyte.gz"
        target.unlink()
    plant(target, kind)
    before = listing(raw)
    with bounded(seconds=30):
        code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--data.data_dir", d, "--out", tmp_path / "p.png")
    line = one_error_line(err)
    assert code == 2 and str(target) in line
    assert listing(raw) == before  # nothing unpacked over it, nothing added
    assert not (tmp_path / "p.png").exists()


def test_fifo_where_idx_file_belongs_does_not_hang_the_process(tmp_path, ckpt):
    d = tmp_path / "data"
    write_fake_split(data.raw_dir(d))
    fifo = data.raw_dir(d) / "train-images-idx3-ubyte"
    fifo.unlink()
    os.mkfifo(fifo)
    res = run_predict("--ckpt_path", ckpt, "--data.data_dir", d, "--out", tmp_path / "p.png", timeout=60)
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and "FIFO" in line and str(fifo) in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_links_to_regular_files_keep_working(tmp_path, ckpt, fake_data, capsys):
    """Symlinks to real IDX files are used as they are; symlinks to .gz files are unpacked beside them."""
    linked = data.raw_dir(tmp_path / "linked")
    linked.mkdir(parents=True)
    for n in IDX_NAMES:
        (linked / n).symlink_to(data.raw_dir(fake_data) / n)
    code, out, err = predict_main(
        capsys, "--ckpt_path", ckpt, "--data.data_dir", linked.parents[1], "--json", "--out", tmp_path / "p.png"
    )
    assert code == 0, err
    assert len(json.loads(out)["predictions"]) == 16 and all((linked / n).is_symlink() for n in IDX_NAMES)

    gz_store = tmp_path / "gz_store"
    sums = write_gz_split(gz_store)
    raw = data.raw_dir(tmp_path / "gzlinked")
    raw.mkdir(parents=True)
    for n in sums:
        (raw / n).symlink_to(gz_store / n)
    assert data.find_raw_files(raw.parents[1], system_dir=tmp_path / "none", download=False) == raw
    assert all((raw / n).is_symlink() for n in sums) and all((raw / n).is_file() for n in IDX_NAMES)
    assert {n: sha256(gz_store / n) for n in sums} == sums


# ------------------------------------------------------------------------------- 4. bounded resources in predict
def test_very_wide_png_is_not_padded_to_a_huge_square(tmp_path, ckpt, capsys):
    """100000x1 pixels: padding it to 100000x100000 first would take 40 GB; it must work within 1 GB, fast."""
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((1, 100_000), 200, dtype=np.uint8)).save(wide)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with bounded(seconds=30, extra_bytes=1 << 30):
        X = predict.load_image(wide)
        code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--json", wide)
    assert time.perf_counter() - start < 10
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024 < 300e6
    assert X.shape == (28, 28) and abs(float(X.mean()) - 200 / 255) < 0.01  # padded with its own background
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["image"] == str(wide)


@pytest.mark.parametrize("side", [30_000, 10_000])
def test_png_header_claiming_a_huge_image_is_refused(tmp_path, ckpt, capsys, side):
    """A few hundred bytes that claim side x side pixels: refused from the header in one line, no allocation. 30000:
    above PIL's own bomb limit (an error); 10000: above its warning limit (a second stderr line unless handled)."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(side, side))
    assert bomb.stat().st_size < 1000
    with bounded(seconds=30, extra_bytes=1 << 30), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = predict_main(capsys, "--ckpt_path", ckpt, bomb)
    line = one_error_line(err)
    assert code == 2 and str(bomb) in line and "smaller image" in line
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]  # would print on stderr


@pytest.mark.parametrize("kind", ["dev_zero", "link_to_dev_zero", "folder"])
def test_cost_matrix_special_files_refused(tmp_path, ckpt, small_png, capsys, kind):
    path = {"dev_zero": Path("/dev/zero"), "link_to_dev_zero": tmp_path / "cost.txt", "folder": tmp_path}[kind]
    if kind == "link_to_dev_zero":
        path.symlink_to("/dev/zero")
    with bounded(seconds=30, extra_bytes=1 << 30):
        code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--cost-matrix", path, small_png)
    line = one_error_line(err)
    assert code == 2 and str(path) in line and "--cost-matrix" in line and out == ""


def test_fifo_cost_matrix_does_not_hang(tmp_path, ckpt, small_png):
    fifo = tmp_path / "cost.fifo"
    os.mkfifo(fifo)
    res = run_predict("--ckpt_path", ckpt, "--cost-matrix", fifo, small_png, timeout=60)
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and str(fifo) in line and "--cost-matrix" in line


# ------------------------------------------------------------------------------- 5. one line, exit 2
def test_test_split_with_zero_images(tmp_path, ckpt, capsys):
    d = tmp_path / "data"
    write_fake_split(data.raw_dir(d), n_test=0)
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--data.data_dir", d, "--out", tmp_path / "p.png")
    line = one_error_line(err)
    assert code == 2 and "0 images" in line and "t10k-images-idx3-ubyte" in line
    assert not (tmp_path / "p.png").exists()


def test_sparse_idx_claiming_50_million_images_is_refused_unread(tmp_path, ckpt, capsys):
    """A 39 GB sparse file whose size matches its header: only the count limit can stop it, and must."""
    d = tmp_path / "data"
    write_fake_split(data.raw_dir(d))
    big = data.raw_dir(d) / "t10k-images-idx3-ubyte"
    count = 50_000_000
    with open(big, "wb") as f:
        f.write(struct.pack(">4I", 0x0803, count, 28, 28))
        f.truncate(16 + count * 28 * 28)
    size = big.stat().st_size
    with bounded(seconds=30, extra_bytes=1 << 30):
        code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--data.data_dir", d, "--out", tmp_path / "p.png")
    line = one_error_line(err)
    assert code == 2 and str(count) in line and str(data.MAX_ITEMS) in line and str(big) in line
    assert big.stat().st_size == size and big.stat().st_blocks * 512 < 1e6  # untouched, still sparse


def test_cost_matrix_not_utf8(tmp_path, ckpt, small_png, capsys):
    cost = tmp_path / "cost.txt"
    cost.write_bytes(b"\xff\xfe" + "1 0\n".encode("utf-16-le") * 10)
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--cost-matrix", cost, small_png)
    line = one_error_line(err)
    assert code == 2 and "UTF-8" in line and str(cost) in line and "--cost-matrix" in line


def test_out_pointing_at_a_folder(tmp_path, ckpt, fake_data, capsys):
    folder = tmp_path / "figs"
    folder.mkdir()
    (folder / "mine.png").write_bytes(b"user's file")
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--data.data_dir", fake_data, "--out", folder)
    line = one_error_line(err)
    assert code == 2 and "--out" in line and str(folder) in line
    assert [p.name for p in folder.iterdir()] == ["mine.png"] and (folder / "mine.png").read_bytes() == b"user's file"


def benchmark_main(benchmark, monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["scripts/benchmark.py", *map(str, args)])
    code = benchmark.main()
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--epochs", "--rounds", "--d2l-epochs"])
def test_benchmark_zero_counts(tmp_path, benchmark, monkeypatch, capsys, flag):
    """Refused before any work: a data_dir that is a file would give another message if the check were skipped."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    code, err = benchmark_main(
        benchmark, monkeypatch, capsys, flag, 0, "--data.data_dir", not_a_folder, "--out", tmp_path / "b.json"
    )
    line = one_error_line(err)
    assert code == 2 and flag in line and ">= 1" in line
    assert not (tmp_path / "b.json").exists()


def test_benchmark_zero_epochs_as_a_process(tmp_path):
    res = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--epochs", "0", "--out", str(tmp_path / "b.json")],
        cwd=ROOT,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and "--epochs" in line and not (tmp_path / "b.json").exists()


# ------------------------------------------------------------------------------- 6. wrong answers with exit 0
def gradient(h: int = 40, w: int = 30) -> np.ndarray:
    """A picture with dark and light parts (8-bit)."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 7 + y * 3) % 256).astype(np.uint8)


@pytest.mark.parametrize("mode", ["gray16", "gray16_by_hand", "rgb16_by_hand", "gray_alpha16_by_hand"])
def test_16_bit_png_is_read_by_its_bit_depth(tmp_path, ckpt, capsys, mode):
    a8 = gradient()
    h, w = a8.shape
    p8, p16 = tmp_path / "pic8.png", tmp_path / f"{mode}.png"
    Image.fromarray(a8).save(p8)
    v16 = a8.astype(">u2") * 257  # the same levels in 16 bits (big-endian, as PNG stores them)
    if mode == "gray16":
        Image.fromarray(a8.astype(np.uint16) * 257).save(p16)
    else:
        channels, color_type = {"gray16_by_hand": (1, 0), "rgb16_by_hand": (3, 2), "gray_alpha16_by_hand": (2, 4)}[mode]
        px = np.repeat(v16[..., None], channels, axis=2)
        if mode == "gray_alpha16_by_hand":
            px[..., 1] = 65535  # opaque
        rows = b"".join(b"\0" + px[i].astype(">u2").tobytes() for i in range(h))
        p16.write_bytes(png_bytes(w, h, rows, bit_depth=16, color_type=color_type))
    x8, x16 = predict.load_image(p8), predict.load_image(p16)
    assert float(x8.mean()) < 0.8  # a picture, not white
    assert abs(float(x16.mean()) - float(x8.mean())) < 0.01, (float(x16.mean()), float(x8.mean()))
    assert torch.allclose(x16, x8, atol=0.01)
    code, out, err = predict_main(capsys, "--ckpt_path", ckpt, "--json", p8, p16)
    assert code == 0, err
    r8, r16 = json.loads(out)["predictions"]
    assert r8["predicted"] == r16["predicted"] and abs(r8["probability"] - r16["probability"]) < 0.02


def _strict_json(text: str):
    def no_constants(name):
        raise AssertionError(f"{name} in --json output: not valid JSON")

    return json.loads(text, parse_constant=no_constants)


@pytest.mark.parametrize("damage", ["W_nan", "b_inf", "W_huge", "std_zero", "mean_nan"])
def test_diverged_checkpoint_is_refused_not_printed_as_nan(tmp_path, ckpt, fake_data, capsys, damage):
    """W_huge: finite weights whose logits overflow; std_zero/mean_nan: broken input statistics. All would print NaN
    (invalid JSON) with exit 0."""
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = c["state_dict"]
    if damage == "W_nan":
        state["W"][3, 4] = float("nan")
    elif damage == "b_inf":
        state["b"][0] = float("inf")
    elif damage == "W_huge":
        state["W"].fill_(3e38)
    else:
        c["FashionMNISTDataModule"] = {"input_stats": (0.28, 0.0) if damage == "std_zero" else (float("nan"), 0.35)}
    bad = tmp_path / f"{damage}.ckpt"
    torch.save(c, bad)
    code, out, err = predict_main(
        capsys, "--ckpt_path", bad, "--data.data_dir", fake_data, "--json", "--out", tmp_path / "p.png"
    )
    line = one_error_line(err)
    assert code == 2 and str(bad) in line and "--ckpt_path" in line
    assert out == "" and not (tmp_path / "p.png").exists()


def test_healthy_checkpoint_json_is_strict_json(ckpt, fake_data, tmp_path, capsys):
    """The control for the test above: the same call with the undamaged checkpoint prints valid JSON, exit 0."""
    code, out, err = predict_main(
        capsys, "--ckpt_path", ckpt, "--data.data_dir", fake_data, "--json", "--out", tmp_path / "p.png"
    )
    assert code == 0, err
    records = _strict_json(out)["predictions"]
    assert len(records) == 16 and all(0 <= r["probability"] <= 1 for r in records)


# ------------------------------------------------------------------------------- 7. crash debris
def test_stale_temp_beside_predictions_png_is_removed_live_one_kept(tmp_path, ckpt, fake_data, capsys, pids):
    dead, alive = pids
    out_dir = tmp_path / "preds"
    out_dir.mkdir()
    stale, live = out_dir / f".predictions.png.tmp{dead}", out_dir / f".predictions.png.tmp{alive}"
    for p in (stale, live):
        p.write_bytes(b"half a png")
    code, out, err = predict_main(
        capsys, "--ckpt_path", ckpt, "--data.data_dir", fake_data, "--out", out_dir / "predictions.png"
    )
    assert code == 0, err
    assert not stale.exists() and live.read_bytes() == b"half a png"
    assert (out_dir / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stale_temp_beside_unpacked_idx_is_removed_live_one_kept(tmp_path, pids):
    dead, alive = pids
    raw = data.raw_dir(tmp_path / "data")
    write_gz_split(raw)
    stale, live = raw / f".train-images-idx3-ubyte.tmp{dead}", raw / f".t10k-labels-idx1-ubyte.tmp{alive}"
    for p in (stale, live):
        p.write_bytes(b"half an idx")
    assert data.find_raw_files(raw.parents[1], system_dir=tmp_path / "none", download=False) == raw
    assert not stale.exists() and live.read_bytes() == b"half an idx"
    assert all(
        data.check_idx_file(raw / n, k, s) > 0
        for n, k, s in [("train-images-idx3-ubyte", "images", (28, 28)), ("t10k-labels-idx1-ubyte", "labels", ())]
    )


# ------------------------------------------------------------------------------- 8. hints name the tool's own flags
def test_predict_hints_name_flags_predict_accepts(tmp_path, ckpt, fake_data, capsys):
    """Collect predict's messages that name a flag, then run predict with each named flag: it must work."""
    root = tmp_path / "root"
    (root / "lightning_logs" / "version_0" / "checkpoints").mkdir(parents=True)
    (root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    not_a_folder, folder, garbage = tmp_path / "file", tmp_path / "folder", tmp_path / "garbage.ckpt"
    not_a_folder.write_text("x"), folder.mkdir(), garbage.write_bytes(b"PK\x03\x04 not a zip")
    out = ["--out", tmp_path / "p.png"]
    cases = [
        ["--root_dir", tmp_path / "empty"],  # no checkpoint at all
        ["--ckpt_path", tmp_path / "missing.ckpt"],
        ["--ckpt_path", folder],
        ["--ckpt_path", garbage],
        ["--ckpt_path", ckpt, "--data.data_dir", not_a_folder],
    ]
    lines = []
    for args in cases:
        code, _, err = predict_main(capsys, *args, *out)
        lines.append(one_error_line(err))
        assert code == 2
    named = set().union(*map(flags_in, lines))
    assert {"--ckpt_path", "--data.data_dir"} <= named, lines
    good = {"--ckpt_path": [ckpt], "--data.data_dir": [fake_data], "--root_dir": [root]}
    for flag in named:
        assert flag in good, f"predict's message names {flag}: add a working value for it here ({lines})"
        code, stdout, err = predict_main(
            capsys, flag, *good[flag], "--data.data_dir", fake_data, "--root_dir", root, *out
        )
        assert code == 0, (flag, err)
    if any("'last'" in line for line in lines):  # "(or 'last')": predict must take that too
        code, stdout, err = predict_main(
            capsys, "--ckpt_path", "last", "--root_dir", root, "--data.data_dir", fake_data, *out
        )
        assert code == 0, err


def test_exercises_data_hint_names_a_flag_exercises_accepts(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert exercises.main(["3", "--data.data_dir", str(not_a_folder)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert flags_in(line) == {"--data.data_dir"}, line
    for flag in flags_in(line):  # exercise 1 needs no data: the flag is parsed, the run succeeds
        assert exercises.main(["1", flag, str(tmp_path / "anywhere")]) == 0
        assert capsys.readouterr().err == ""


def test_benchmark_data_hint_names_a_flag_benchmark_accepts(tmp_path, benchmark, monkeypatch, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    code, err = benchmark_main(
        benchmark, monkeypatch, capsys, "--data.data_dir", not_a_folder, "--out", tmp_path / "b.json"
    )
    line = one_error_line(err)
    assert code == 2 and flags_in(line) == {"--data.data_dir"}, line
    for flag in flags_in(line):  # accepted by benchmark's parser (else argparse exits with "unrecognized arguments")
        code, err = benchmark_main(benchmark, monkeypatch, capsys, flag, not_a_folder, "--epochs", "0")
        assert code == 2 and "--epochs" in one_error_line(err)
