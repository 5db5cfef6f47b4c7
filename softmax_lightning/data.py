"""Fashion-MNIST as a ``LightningDataModule``: each split held in memory as tensors, served by a standard ``DataLoader``.

Specs: 10 classes, images 1x28x28 scaled to [0, 1] once (the chapter's ``ToTensor``), 60k train / 10k test.

Data flows one way: the four original IDX files -> header check -> uint8 tensors -> one float tensor per split ->
minibatches, each gathered with one ``index_select`` (``InMemoryDataset.__getitems__``), no per-sample collate.
One Lightning batch is one minibatch: 235 per training epoch at batch size 256, the last one holding 96 images.

Where the files come from (``prepare_data``), first that works:
  1. already in ``data_dir/FashionMNIST/raw/`` (torchvision's layout; ``.gz`` files there are unpacked);
  2. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/*.gz``), unpacked into
     ``data_dir``;
  3. torchvision's download (needs internet). torchvision is imported only then: importing it costs about 2 s.
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import shutil
import stat
import struct
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from softmax_lightning.errors import UserError, one_line
from softmax_lightning.io import remove_stale_temp_files, temp_path, write_error

CLASSES_EN = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
              "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASSES_ZH = ("T恤", "裤子", "套头衫", "连衣裙", "外套", "凉鞋", "衬衫", "运动鞋", "包", "靴子")
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


def class_names(labels: str = "en") -> tuple[str, ...]:
    """The ten class names, in English (``"en"``) or the chapter's Chinese (``"zh"``)."""
    if labels not in ("en", "zh"):
        raise UserError(f"labels must be 'en' or 'zh', got {labels!r}")
    return CLASSES_ZH if labels == "zh" else CLASSES_EN


def raw_dir(data_dir: str | Path) -> Path:
    """Where torchvision's ``FashionMNIST`` looks for the unpacked IDX files."""
    return Path(data_dir) / "FashionMNIST" / "raw"


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
        raise UserError(f"{path} is a broken link; {fix or 'point it at the IDX file (this tool never replaces it)'}") \
            from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise UserError(f"{path} is {kind}, not a regular file; "
                        f"{fix or 'put the IDX file there instead (this tool never replaces it)'}")
    return True


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
            raise UserError(f"no space left on the device while unpacking {src} into {dst}{need}; no partial file "
                            f"was left and {src} is unchanged; pass --data.data_dir with a folder on a disk with room") \
                from None
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
    for source, fix in ((raw, "replace it with a good copy (or move it away to fetch a fresh one)"),
                        (system_dir, "reinstall it: apt-get install --reinstall dataset-fashion-mnist")):
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
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(data_dir), train=train, download=True)
            return raw
        except Exception as e:  # noqa: BLE001 - any network/IO failure means "this way did not work"
            failed = f" (torchvision's download failed: {one_line(e, 120)})"
    raise UserError(f"Fashion-MNIST files not found ({', '.join(missing)} missing in {raw}){failed}; "
                    + HOW_TO_GET.format(raw=raw, sys=system_dir))


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
        raise UserError(f"{path} has magic number {magic:#010x}, expected {_IDX_MAGIC[kind]:#010x} "
                        f"(IDX {kind} of unsigned bytes); is it the right file? {fix}")
    if tuple(dims) != shape:
        raise UserError(f"{path} holds {kind} of shape {tuple(dims)}, expected {shape}; {fix}")
    if count > MAX_ITEMS:
        raise UserError(f"{path} claims {count} {kind}, more than the {MAX_ITEMS} this tool loads into memory "
                        f"(Fashion-MNIST has 60000); {fix}")
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
        raise UserError(f"{img_file} has {len(images)} images but {lbl_file} has {len(labels)} labels; the files "
                        f"are from different sets: replace both with a matching pair")
    if len(labels) == 0:
        raise UserError(f"{img_file} holds 0 images; the {split} split needs at least one: replace it with the "
                        f"Fashion-MNIST file")
    if labels.max() > 9:  # uint8: never negative
        bad = int((labels > 9).nonzero()[0])
        raise UserError(f"{lbl_file} has label {int(labels[bad])} at index {bad}, outside 0-9; replace it with a "
                        f"good copy")
    return images, labels


class InMemoryDataset(Dataset):
    """A split held as two tensors, ``X (N, 1, 28, 28)`` and ``y (N,)``: d2l's ``TensorDataset``, plus batched reads.

    ``DataLoader`` calls ``__getitems__`` with a whole minibatch of indices when it exists (a public hook of
    ``torch.utils.data``), so a minibatch costs one ``index_select`` per tensor instead of 256 ``__getitem__`` calls
    and a ``torch.stack``.
    """

    def __init__(self, X: Tensor, y: Tensor) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.X[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.from_numpy(np.asarray(indices)).to(self.X.device)  # NumPy reads a list of ints 6x faster than torch
        return self.X.index_select(0, idx), self.y.index_select(0, idx)  # one gather each; 3x faster than X[idx]


def as_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``collate_fn`` for ``InMemoryDataset``: ``__getitems__`` already returns the batch ``(X, y)``."""
    return batch


class EpochShuffle(RandomSampler):
    """``RandomSampler`` whose order is a pure function of ``(seed, epoch)``: ``randperm`` seeded with ``seed + epoch``.

    Lightning calls ``set_epoch`` at the start of every epoch (as it does for a ``DistributedSampler``, which uses the
    same rule), so a run resumed from a checkpoint sees exactly the orders of an uninterrupted one, whatever the
    global random state. Under DDP, Lightning replaces it with a ``DistributedSampler(shuffle=True)``.
    """

    def __init__(self, data_source: Dataset, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST for the chapter: batch 256, train reshuffled every epoch, val/test in order.

    Args:
        data_dir: folder holding (or to hold) ``FashionMNIST/raw/``.
        batch_size: samples per minibatch (= per Lightning batch) *per device*; under DDP the global batch is
            ``batch_size * world_size``.
        val_size: 0 validates on the 10k test split, as the chapter does; ``N > 0`` holds out N seeded training
            images for validation. ``trainer.test`` always uses the test split.
        num_workers: ``DataLoader`` worker processes. 0 (the default) is fastest: batches are gathered from memory,
            and on a GPU the splits live on the device. With workers the splits stay in CPU memory and Lightning
            moves each batch.
        seed: seeds the holdout split and every epoch's shuffle (``seed + epoch``).
        standardize: subtract the training split's mean pixel value and divide by its std (statistics from the
            training split only; saved in checkpoints through ``state_dict``).
        download: allow torchvision's download as the last way to get the files.
    """

    dims = (1, 28, 28)  # one image
    num_classes = 10

    def __init__(self, data_dir: str = "data", batch_size: int = 256, val_size: int = 0, num_workers: int = 0,
                 seed: int = 0, standardize: bool = False, download: bool = True) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size} (--data.batch_size)")
        if val_size < 0:
            raise UserError(f"val_size must be >= 0, got {val_size} (--data.val_size)")
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers} (--data.num_workers)")
        self.save_hyperparameters()
        self.train_set: InMemoryDataset | None = None
        self.val_set: InMemoryDataset | None = None
        self.test_set: InMemoryDataset | None = None
        self.input_stats: tuple[float, float] | None = None  # (mean, std) when standardize=True

    def prepare_data(self) -> None:
        """Find or fetch the IDX files (no state is set here: under DDP it runs on one process per node)."""
        find_raw_files(self.hparams.data_dir, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        """Parse both splits once, scale to [0, 1], carve the seeded holdout, put them on the training device."""
        if self.test_set is not None:
            return
        hp = self.hparams
        find_raw_files(hp.data_dir, download=False)  # prepare_data ran on another rank/node: check, don't fetch
        on_device = self.trainer is not None and hp.num_workers == 0
        device = self.trainer.strategy.root_device if on_device else torch.device("cpu")
        splits = {}
        for split in ("train", "test"):
            images, labels = load_split(hp.data_dir, split)
            X = images.unsqueeze(1).to(device=device, dtype=torch.float32).div_(255)  # (N, 28, 28) -> (N, 1, 28, 28)
            splits[split] = (X, labels.to(device))
        X, y = splits["train"]
        if hp.val_size >= len(y):
            raise UserError(f"val_size must be smaller than the training set ({len(y)}), got {hp.val_size} "
                            f"(--data.val_size)")
        if hp.val_size:
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(hp.seed)).to(device)
            val_idx, train_idx = perm[: hp.val_size], perm[hp.val_size :]
            splits["val"], splits["train"] = (X[val_idx], y[val_idx]), (X[train_idx], y[train_idx])
        else:
            splits["val"] = splits["test"]  # the chapter validates on the test split (the same tensors, no copy)
        if hp.standardize:  # statistics of the training split only (val and test must not leak into them)
            Xtr = splits["train"][0]
            self.input_stats = mean, std = float(Xtr.mean()), float(Xtr.std())
            for X in {id(X): X for X, _ in splits.values()}.values():  # val may alias test: each tensor once
                X.sub_(mean).div_(std)
        self.train_set, self.val_set, self.test_set = (InMemoryDataset(*splits[s]) for s in ("train", "val", "test"))

    def _loader(self, dataset: InMemoryDataset, shuffle: bool = False) -> DataLoader:
        """One loader factory for every split: train shuffles (``EpochShuffle``), the others keep the files' order."""
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=self.hparams.batch_size, collate_fn=as_batch, num_workers=workers,
                          sampler=EpochShuffle(dataset, self.hparams.seed) if shuffle else None,
                          persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def state_dict(self) -> dict:
        """Saved in checkpoints: the standardisation statistics, so prediction uses the training split's."""
        return {"input_stats": self.input_stats}

    def load_state_dict(self, state_dict: dict) -> None:
        self.input_stats = state_dict.get("input_stats")
