"""Fashion-MNIST as a ``LightningDataModule`` that serves minibatches from tensors held in memory.

Specs: 10 classes, images 1x28x28 scaled to [0, 1] once (the chapter's ``ToTensor``), 60k train / 10k test.

Data flows one way: the four original IDX files -> header check -> uint8 tensors -> one float tensor per
split -> minibatches by index (no per-sample PIL conversion or collate on the hot path). torchvision is
imported only to download (importing it costs about 2 s: it pulls in ``torch._dynamo``).

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
            from torchvision.datasets import FashionMNIST

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


def read_idx(path: Path, kind: str, shape: tuple[int, ...] = ()) -> Tensor:
    """An IDX file of unsigned bytes as a uint8 tensor ``(count, *shape)``, after ``check_idx_file``."""
    count = check_idx_file(path, kind, shape)
    header = 4 + 4 * (1 + len(shape))
    data = np.fromfile(path, dtype=np.uint8, offset=header)
    return torch.from_numpy(data).reshape(count, *shape)


def load_split(data_dir: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """Parse one split's two IDX files, after checking them against each other.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.
    """
    raw = raw_dir(data_dir)
    img_file, lbl_file = (raw / n for n in SPLIT_FILES[split])
    images, labels = read_idx(img_file, "images", (28, 28)), read_idx(lbl_file, "labels").long()
    if len(images) != len(labels):
        raise UserError(f"{img_file} has {len(images)} images but {lbl_file} has {len(labels)} labels; the files "
                        f"are from different sets: delete both and run again to fetch a matching pair")
    if len(labels) and labels.max() > 9:  # uint8: never negative
        bad = int((labels > 9).nonzero()[0])
        raise UserError(f"{lbl_file} has label {int(labels[bad])} at index {bad}, outside 0-9; delete it and "
                        f"run again to fetch a fresh copy")
    return images, labels


def _seed_for(seed: int, epoch: int) -> int:
    """A generator seed that is a pure function of (seed, epoch): shuffles never depend on global RNG state."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class InMemoryLoader:
    """An iterable of ``(X, y)`` minibatches sliced from whole-split tensors.

    The order is a pure function of ``(seed, epoch)``: ``set_epoch`` is called by Lightning's loops every epoch
    (through the ``sampler`` attribute, as for a ``DistributedSampler``). Under DDP each rank takes a disjoint,
    equal-sized stride of the epoch's order (training drops the ``N mod world_size`` remainder so every rank steps
    the same number of times; evaluation covers every sample once). The last partial batch is kept.

    With ``group > 1`` each item is a ``MinibatchGroup`` of up to ``group`` consecutive minibatches, so a
    consumer that pays a fixed cost per item (Lightning's loop: hooks, progress bar, device transfer) pays it once
    per ``group`` minibatches. The minibatches and their order are the same for every ``group``.
    """

    def __init__(self, X: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, group: int = 1) -> None:
        self.X, self.y = X, y
        self.batch_size, self.shuffle, self.seed, self.group = batch_size, shuffle, seed, group
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

    @property
    def num_minibatches(self) -> int:
        """Minibatches per epoch on this rank (SGD steps, when training)."""
        return math.ceil(self._count() / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.num_minibatches / self.group)

    def _take(self, idx: Tensor | None, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Samples ``start:stop`` of this epoch's order: views when in file order, else one gather."""
        if idx is None:
            return self.X[start:stop], self.y[start:stop]
        sel = idx[start:stop]
        return torch.index_select(self.X, 0, sel), torch.index_select(self.y, 0, sel)  # 3x faster than X[sel]

    def __iter__(self):
        idx, bs = self.indices(), self.batch_size
        starts = range(0, self._count(), bs)
        for g in range(0, len(starts), self.group):
            if self.group == 1:
                yield self._take(idx, starts[g], starts[g] + bs)
            else:
                yield MinibatchGroup(self, idx, starts[g : g + self.group])


class MinibatchGroup:
    """Consecutive minibatches of one epoch, gathered one at a time as they are iterated.

    Lazy on purpose: materialising a group (and the next one, which Lightning prefetches) would keep ~40 MB of
    800 KB minibatch buffers alive; gathered on demand, the allocator reuses one buffer, as in a plain loop.
    Lightning moves batches with ``.to(device)``; the data module already keeps the split on the training device.
    """

    def __init__(self, loader: InMemoryLoader, idx: Tensor | None, starts: range) -> None:
        self.loader, self.idx, self.starts = loader, idx, starts

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        bs = self.loader.batch_size
        for s in self.starts:
            yield self.loader._take(self.idx, s, s + bs)

    def to(self, device: torch.device | str, *args, **kwargs):
        """Itself when the data is on ``device`` already; else the minibatches, moved (a list)."""
        if self.loader.X.device == torch.device(device):
            return self
        return [(X.to(device, *args, **kwargs), y.to(device, *args, **kwargs)) for X, y in self]


def minibatches(batch: tuple[Tensor, Tensor] | list | MinibatchGroup):
    """The ``(X, y)`` minibatches in one loader item: the item itself, or the ``MinibatchGroup`` (or list) that
    ``InMemoryLoader(group > 1)`` yields. (A plain ``DataLoader`` yields ``[X, y]``, a list of tensors: one minibatch.)"""
    if isinstance(batch, MinibatchGroup):
        return batch
    return [batch] if isinstance(batch[0], Tensor) else batch


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST for the chapter: batch 256, train reshuffled every epoch, val/test in order.

    Args:
        data_dir: folder holding (or to hold) ``FashionMNIST/raw/``.
        batch_size: samples per minibatch *per device* (under DDP the global batch is ``batch_size * world_size``).
        val_size: 0 validates on the 10k test split, as the chapter does; ``N > 0`` holds out N seeded training
            images for validation. ``trainer.test`` always uses the test split.
        num_workers: accepted for API familiarity; batches come from memory, so no worker processes are used.
        steps_per_batch: minibatches (SGD steps) per Lightning training batch; evaluation batches hold
            ``batch_size * steps_per_batch`` samples. Only the speed depends on it: the minibatches, their order, the
            updates and the metrics are the same for every value. Lightning spends about 0.4-0.9 ms of fixed work per
            batch (hooks, progress bar, device transfer) against about 1.3 ms for one SGD step here; 16 pays
            it once per 16 steps. Lightning's batch counts (progress bar, ``limit_train_batches``) count these groups,
            except ``overfit_batches``, which keeps its meaning (N minibatches); ``trainer.global_step`` and
            ``max_steps`` count SGD steps.
        seed: seeds the holdout split and every epoch's shuffle (``seed``, ``epoch``).
        standardize: subtract the training split's mean pixel value and divide by its std (statistics from the
            training split only; saved in checkpoints through ``state_dict``).
        download: allow torchvision's download as the last way to get the files.
    """

    def __init__(self, data_dir: str = "data", batch_size: int = 256, val_size: int = 0, num_workers: int = 0,
                 steps_per_batch: int = 16, seed: int = 0, standardize: bool = False, download: bool = True) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("steps_per_batch", steps_per_batch)):
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value} (--data.{name})")
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
        # Lightning's overfit_batches=N: the same N minibatches every epoch, unshuffled, one per Lightning batch
        overfit = trainer is not None and trainer.overfit_batches > 0
        bs, k = self.hparams.batch_size, (1 if overfit else self.hparams.steps_per_batch)
        if split == "train":  # k minibatches per item, one SGD step each
            return InMemoryLoader(X, y, bs, shuffle=not overfit, seed=self.hparams.seed, rank=rank, world_size=world,
                                  group=k)
        return InMemoryLoader(X, y, bs * k, shuffle=False, rank=rank, world_size=world)  # batch size: speed only

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
