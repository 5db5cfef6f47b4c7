"""The Fashion-MNIST files: where they come from, checked, unpacked and parsed, each refusal in one line.

The four original IDX files (images: magic 0x0803, ``count x 28 x 28`` unsigned bytes; labels: magic 0x0801) are found
in this order (``find_raw_files``), first that works:
  1. already in ``data_dir/FashionMNIST/raw/`` (torchvision's layout; ``.gz`` files there are unpacked);
  2. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/*.gz``), unpacked into
     ``data_dir``;
  3. torchvision's download (needs internet).

Each file's header is checked against its size before it is read (``check_idx_file``), so a damaged or hostile file
is refused in one line and never read into memory; parsing is then one ``np.fromfile``. (torchvision's reader reads
the whole file first and checks nothing we need, so it would not replace the header check.)
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import check_regular_file, remove_stale_temp_files, temp_path, write_error

SYSTEM_DIR = Path(os.environ.get("FASHION_MNIST_SYSTEM_DIR", "/usr/share/datasets/fashion-mnist"))
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_ITEMS = 1_000_000  # per IDX file: Fashion-MNIST has 60,000; a million images is already 3 GB as float32
_IDX_MAGIC = {"images": 0x0803, "labels": 0x0801}  # ubyte, 3 dims / 1 dim
HOW_TO_GET = (
    "get the data one of three ways: put the four IDX files in {raw}; "
    "or `apt-get install dataset-fashion-mnist` (files in {sys}); "
    "or run once with internet so torchvision downloads them"
)


def raw_dir(data_dir: str | Path) -> Path:
    """Where torchvision's ``FashionMNIST`` looks for the unpacked IDX files."""
    return Path(data_dir) / "FashionMNIST" / "raw"


def _unpacked_size(src: Path) -> int | None:
    """The size of ``src`` unpacked, from the gzip trailer (ISIZE: the size modulo 2**32), or ``None``."""
    try:
        with open(src, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return struct.unpack("<I", f.read(4))[0]
    except (OSError, struct.error):
        return None


def _gunzip(src: Path, dst: Path, fix: str) -> None:
    """Unpack ``src`` into ``dst`` through a temp file (a crash or a full disk never leaves a half file)."""
    remove_stale_temp_files(dst.parent)
    tmp = temp_path(dst)
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dst)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # the archive itself is damaged
        raise UserError(f"{src} is not a valid gzip file ({e}); {fix}") from None
    except OSError as e:
        if e.filename == str(src):
            raise UserError(f"cannot read {src}: {e.strerror}; fix its permissions") from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # where, and how much room it needs
            size = _unpacked_size(src)
            need = f" (it needs {size / 1e6:.0f} MB there)" if size else ""
            raise UserError(
                f"no space left on the device while unpacking {src} into {dst}{need}; no partial file "
                f"was left and {src} is unchanged; pass --data.data_dir with a folder on a disk with room"
            ) from None
        raise write_error(dst, e) from None  # the disk or folder, never the archive
    finally:
        tmp.unlink(missing_ok=True)


def find_raw_files(data_dir: str | Path, system_dir: Path | None = None, download: bool = True) -> Path:
    """Make sure the four unpacked IDX files are in ``raw_dir(data_dir)``; return that folder.

    Raises:
        UserError: ``data_dir`` is not a usable folder, a file there is not a regular file, a ``.gz`` is corrupt, the
            disk is full, or no source has the files.
    """
    data_dir = Path(data_dir)
    system_dir = SYSTEM_DIR if system_dir is None else system_dir
    raw = raw_dir(data_dir)
    names = [n for pair in SPLIT_FILES.values() for n in pair]
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"data_dir {data_dir} is not a folder; pass --data.data_dir with a folder path")
    if data_dir.is_dir() and not os.access(data_dir, os.R_OK | os.X_OK):
        raise UserError(f"data_dir {data_dir} is not readable; fix its permissions or pass another --data.data_dir")
    missing = [n for n in names if not check_regular_file(raw / n)]
    if not missing:
        return raw
    # (1) .gz files already in data_dir, then (2) Debian's package: unpack what is missing.
    for source, fix in (
        (raw, "replace it with a good copy (or move it away to fetch a fresh one)"),
        (system_dir, "reinstall it: apt-get install --reinstall dataset-fashion-mnist"),
    ):
        if all(check_regular_file(source / f"{n}.gz") for n in missing):
            try:
                raw.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create {raw}: {e.strerror}; pick a writable --data.data_dir") from None
            for n in missing:
                _gunzip(source / f"{n}.gz", raw / n, fix)
            return raw
    # (3) torchvision's download.
    failed = ""
    if download:
        made = []  # the folders torchvision will make (data_dir/FashionMNIST/raw and missing parents), deepest first
        folder = raw
        while not os.path.lexists(folder) and folder != folder.parent:
            made.append(folder)
            folder = folder.parent
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(data_dir), train=train, download=True)
            return raw
        except Exception as e:  # noqa: BLE001 - any network/IO failure means "this way did not work"
            failed = f" (torchvision's download failed: {one_line(e, 120)})"
            for folder in made:  # a failed download leaves no empty folders behind
                try:
                    folder.rmdir()
                except OSError:
                    break
    raise UserError(
        f"Fashion-MNIST files not found ({', '.join(missing)} missing in {raw}){failed}; "
        + HOW_TO_GET.format(raw=raw, sys=system_dir)
    )


def check_idx_file(path: Path, kind: str, shape: tuple[int, ...] = ()) -> int:
    """Validate an IDX file's header against its size before parsing; return its item count.

    Args:
        path: the unpacked IDX file.
        kind: ``"images"`` or ``"labels"``.
        shape: expected per-item shape (``(28, 28)`` for images).
    """
    fix = f"replace {path} with a good copy (or move it away to unpack or download a fresh one)"
    ndim = 1 + len(shape)
    try:
        with open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; fix its permissions or {fix}") from None
    if len(header) < 4 + 4 * ndim:
        raise UserError(f"{path} is truncated ({size} bytes, shorter than an IDX header); {fix}")
    magic, count, *dims = struct.unpack(f">{1 + ndim}I", header)
    if magic != _IDX_MAGIC[kind]:
        raise UserError(
            f"{path} has magic number {magic:#010x}, expected {_IDX_MAGIC[kind]:#010x} "
            f"(IDX {kind} of unsigned bytes); is it the right file? {fix}"
        )
    if tuple(dims) != shape:
        raise UserError(f"{path} holds {kind} of shape {tuple(dims)}, expected {shape}; {fix}")
    if count > MAX_ITEMS:
        raise UserError(
            f"{path} claims {count} {kind}, more than the {MAX_ITEMS} this tool loads into memory "
            f"(Fashion-MNIST has 60000); {fix}"
        )
    expected = len(header) + count * math.prod(shape)
    if size != expected:
        raise UserError(f"{path} is truncated or padded: {size} bytes, its header promises {expected}; {fix}")
    return count


def read_idx(path: Path, kind: str, shape: tuple[int, ...] = ()) -> Tensor:
    """An IDX file of unsigned bytes as a uint8 tensor ``(count, *shape)``, after ``check_idx_file``."""
    count = check_idx_file(path, kind, shape)
    header = 4 + 4 * (1 + len(shape))
    data = np.fromfile(path, dtype=np.uint8, offset=header)
    return torch.from_numpy(data).reshape(count, *shape)


def load_split(data_dir: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """Parse one split's two IDX files, after checking them against each other.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``, ``N >= 1``.
    """
    raw = raw_dir(data_dir)
    img_file, lbl_file = (raw / n for n in SPLIT_FILES[split])
    for f in (img_file, lbl_file):
        check_regular_file(f)
    images, labels = read_idx(img_file, "images", (28, 28)), read_idx(lbl_file, "labels").long()
    if len(images) != len(labels):
        raise UserError(
            f"{img_file} has {len(images)} images but {lbl_file} has {len(labels)} labels; the files "
            f"are from different sets: replace both with a matching pair"
        )
    if len(labels) == 0:
        raise UserError(
            f"{img_file} holds 0 images; the {split} split needs at least one: replace it with the Fashion-MNIST file"
        )
    if labels.max() > 9:  # uint8: never negative
        bad = int((labels > 9).nonzero()[0])
        raise UserError(
            f"{lbl_file} has label {int(labels[bad])} at index {bad}, outside 0-9; replace it with a good copy"
        )
    return images, labels
