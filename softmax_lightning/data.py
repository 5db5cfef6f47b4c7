"""Fashion-MNIST as a ``LightningDataModule`` that serves minibatches from tensors held in memory.

Specs: 10 classes, images 1x28x28 scaled to [0, 1] once (the chapter's ``ToTensor``), 60k train / 10k test.

Data flows one way: the four original IDX files -> torchvision's parser -> uint8 tensors -> one float
tensor per split -> minibatches by index (no per-sample PIL conversion or collate on the hot path).

Where the files come from (``prepare_data``), first that works:
  1. already in ``data_dir/FashionMNIST/raw/`` (torchvision's layout; ``.gz`` files there are unpacked);
  2. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/*.gz``), unpacked
     into ``data_dir``;
  3. torchvision's download (needs internet).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import FashionMNIST

from softmax_lightning.errors import UserError

CLASSES_EN = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
              "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASSES_ZH = ("T恤", "裤子", "套头衫", "连衣裙", "外套", "凉鞋", "衬衫", "运动鞋", "包", "靴子")
SYSTEM_DIR = Path(os.environ.get("FASHION_MNIST_SYSTEM_DIR", "/usr/share/datasets/fashion-mnist"))
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
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


def _gunzip(src: Path, dst: Path, fix: str) -> None:
    """Unpack ``src`` into ``dst`` through a temp file (a crash never leaves a half file); never overwrites."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
        os.replace(tmp, dst)
    except (OSError, EOFError, zlib.error) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename == str(tmp):
            raise UserError(f"cannot write {dst}: {e.strerror}; make {dst.parent} writable or pick another "
                            f"--data.data_dir") from None
        raise UserError(f"{src} is not a valid gzip file ({e}); {fix}") from None


def find_raw_files(data_dir: str | Path, system_dir: Path | None = None, download: bool = True) -> Path:
    """Make sure the four unpacked IDX files are in ``raw_dir(data_dir)``; return that folder.

    Raises:
        UserError: ``data_dir`` is not a usable folder, a ``.gz`` is corrupt, or no source has the files.
    """
    data_dir = Path(data_dir)
    system_dir = SYSTEM_DIR if system_dir is None else system_dir
    raw = raw_dir(data_dir)
    names = [n for pair in SPLIT_FILES.values() for n in pair]
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"data_dir {data_dir} is not a folder; pass --data.data_dir with a folder path")
    if data_dir.is_dir() and not os.access(data_dir, os.R_OK | os.X_OK):
        raise UserError(f"data_dir {data_dir} is not readable; fix its permissions or pass another "
                        f"--data.data_dir")
    missing = [n for n in names if not (raw / n).is_file()]
    if not missing:
        return raw
    # (1) .gz files already in data_dir, then (2) Debian's package: unpack what is missing.
    for source, fix in ((raw, "delete it and run again to fetch a fresh copy"),
                        (system_dir, "reinstall it: apt-get install --reinstall dataset-fashion-mnist")):
        if all((source / f"{n}.gz").is_file() for n in missing):
            try:
                raw.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create {raw}: {e.strerror}; pick a writable --data.data_dir") from None
            for n in missing:
                _gunzip(source / f"{n}.gz", raw / n, fix)
            return raw
    # (3) torchvision's download.
    if download:
        try:
            for train in (True, False):
                FashionMNIST(str(data_dir), train=train, download=True)
            return raw
        except Exception:  # noqa: BLE001 - any network/IO failure means "this way did not work"
            pass
    raise UserError(f"Fashion-MNIST files not found ({', '.join(missing)} missing in {raw}); "
                    + HOW_TO_GET.format(raw=raw, sys=system_dir))


def check_idx_file(path: Path, kind: str, shape: tuple[int, ...] = ()) -> int:
    """Validate an IDX file's header against its size before parsing; return its item count.

    Args:
        path: the unpacked IDX file.
        kind: ``"images"`` or ``"labels"``.
        shape: expected per-item shape (``(28, 28)`` for images).
    """
    fix = f"delete {path} and run again to unpack or download a fresh copy"
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
    expected = len(header) + count * math.prod(shape)
    if size != expected:
        raise UserError(f"{path} is truncated or padded: {size} bytes, its header promises {expected}; {fix}")
    return count


def load_split(data_dir: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """Parse one split with torchvision's ``FashionMNIST``, after checking the files.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.
    """
    raw = raw_dir(data_dir)
    img_file, lbl_file = (raw / n for n in SPLIT_FILES[split])
    n_img = check_idx_file(img_file, "images", (28, 28))
    n_lbl = check_idx_file(lbl_file, "labels")
    if n_img != n_lbl:
        raise UserError(f"{img_file} has {n_img} images but {lbl_file} has {n_lbl} labels; the files are from "
                        f"different sets: delete both and run again to fetch a matching pair")
    ds = FashionMNIST(str(data_dir), train=(split == "train"), download=False)
    labels = ds.targets.long()
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        bad = int(((labels < 0) | (labels > 9)).nonzero()[0])
        raise UserError(f"{lbl_file} has label {int(labels[bad])} at index {bad}, outside 0-9; delete it and "
                        f"run again to fetch a fresh copy")
    return ds.data, labels


def _seed_for(seed: int, epoch: int) -> int:
    """A generator seed that is a pure function of (seed, epoch): shuffles never depend on global RNG state."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class InMemoryLoader:
    """An iterable of ``(X, y)`` minibatches sliced from whole-split tensors.

    The order is a pure function of ``(seed, epoch)``: ``set_epoch`` is called by Lightning's loops every epoch
    (through the ``sampler`` attribute, as for a ``DistributedSampler``). Under DDP each rank takes a disjoint,
    equal-sized stride of the epoch's order (training drops the ``N mod world_size`` remainder so every rank steps
    the same number of times; evaluation covers every sample once). The last partial batch is kept.
    """

    def __init__(self, X: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.X, self.y = X, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.sampler = self  # Lightning calls ``loader.sampler.set_epoch(epoch)`` every epoch
        self.batch_sampler = None  # (Lightning inspects both attributes, as on a DataLoader)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order ``__iter__`` serves next."""
        self.epoch = epoch

    def indices(self) -> Tensor | None:
        """This rank's sample indices for the current epoch (``None``: all of them, in order)."""
        n = len(self.y)
        if not self.shuffle and self.world_size == 1:
            return None
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed_for(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
            order = order[: n - n % self.world_size]  # equal share per rank: same number of steps everywhere
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size].to(self.X.device)

    def _count(self) -> int:
        """How many samples this rank serves per epoch (what ``indices()`` would return, without building it)."""
        n, w = len(self.y), self.world_size
        return (n - n % w) // w if self.shuffle else len(range(self.rank, n, w))

    def __len__(self) -> int:
        return math.ceil(self._count() / self.batch_size)

    def __iter__(self):
        idx = self.indices()
        for start in range(0, self._count(), self.batch_size):
            if idx is None:  # contiguous views, no copy
                yield self.X[start : start + self.batch_size], self.y[start : start + self.batch_size]
            else:
                sel = idx[start : start + self.batch_size]
                yield torch.index_select(self.X, 0, sel), torch.index_select(self.y, 0, sel)  # 3x faster than X[sel]


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST for the chapter: batch 256, train reshuffled every epoch, val/test in order.

    Args:
        data_dir: folder holding (or to hold) ``FashionMNIST/raw/``.
        batch_size: samples per minibatch *per device* (under DDP the global batch is ``batch_size * world_size``).
        val_size: 0 validates on the 10k test split, as the chapter does; ``N > 0`` holds out N seeded training
            images for validation. ``trainer.test`` always uses the test split.
        num_workers: accepted for API familiarity; batches come from memory, so no worker processes are used.
        seed: seeds the holdout split and every epoch's shuffle (``seed``, ``epoch``).
        standardize: subtract the training split's mean pixel value and divide by its std (statistics from the
            training split only; saved in checkpoints through ``state_dict``).
        download: allow torchvision's download as the last way to get the files.
    """

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
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.input_stats: tuple[float, float] | None = None

    @property
    def num_classes(self) -> int:
        return 10

    def prepare_data(self) -> None:
        """Find or fetch the IDX files (no state is set here: under DDP it runs on one process per node)."""
        find_raw_files(self.hparams.data_dir, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        """Parse both splits once, scale to [0, 1], carve the seeded holdout, move to the training device."""
        if self.splits:
            return
        hp = self.hparams
        find_raw_files(hp.data_dir, download=False)  # prepare_data ran on another rank/node: check, don't fetch
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for split in ("train", "test"):
            images, labels = load_split(hp.data_dir, split)
            X = images.unsqueeze(1).to(device=device, dtype=torch.float32).div_(255)  # (N, 28, 28) -> (N, 1, 28, 28)
            self.splits[split] = (X, labels.to(device))
        X, y = self.splits["train"]
        if hp.val_size >= len(y):
            raise UserError(f"val_size must be smaller than the training set ({len(y)}), got {hp.val_size}")
        if hp.val_size:
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(hp.seed)).to(device)
            val_idx, train_idx = perm[: hp.val_size], perm[hp.val_size :]
            self.splits["val"] = (X[val_idx], y[val_idx])
            self.splits["train"] = (X[train_idx], y[train_idx])
        else:
            self.splits["val"] = self.splits["test"]
        if hp.standardize:
            if self.input_stats is None:  # not restored from a checkpoint
                Xtr = self.splits["train"][0]
                self.input_stats = (float(Xtr.mean()), float(Xtr.std()))
            mean, std = self.input_stats
            for X in {id(X): X for X, _ in self.splits.values()}.values():  # val may alias test: each tensor once
                X.sub_(mean).div_(std)

    def _loader(self, split: str) -> InMemoryLoader:
        """One loader factory for every split (train shuffles, the others keep the files' order)."""
        X, y = self.splits[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        overfit = trainer is not None and trainer.overfit_batches > 0  # Lightning's overfit_batches: same batches
        return InMemoryLoader(X, y, self.hparams.batch_size, shuffle=(split == "train" and not overfit),
                              seed=self.hparams.seed, rank=rank, world_size=world)

    def train_dataloader(self) -> InMemoryLoader:
        return self._loader("train")

    def val_dataloader(self) -> InMemoryLoader:
        return self._loader("val")

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader("test")

    def predict_dataloader(self) -> InMemoryLoader:
        return self._loader("test")

    def state_dict(self) -> dict:
        """Saved in checkpoints: the standardisation statistics, so prediction uses the training split's."""
        return {"input_stats": self.input_stats}

    def load_state_dict(self, state_dict: dict) -> None:
        self.input_stats = state_dict.get("input_stats")
