"""Fashion-MNIST as a ``LightningDataModule``: each split held in memory as tensors, served by a ``DataLoader``.

Specs: 10 classes, images 1x28x28 scaled to [0, 1] once (the chapter's ``ToTensor``), 60k train / 10k test.

Data flows one way: the four original IDX files (``fashion_mnist``: found, checked, parsed) -> uint8 tensors -> one
float tensor per split, in CPU memory -> minibatches, each gathered with one ``index_select``
(``InMemoryDataset.__getitems__``), no per-sample collate -> Lightning moves each minibatch to the model's device.
One Lightning batch is one minibatch: 235 per training epoch at batch size 256, the last one holding 96 images.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from softmax_lightning.errors import UserError
from softmax_lightning.fashion_mnist import MAX_ITEMS, find_raw_files, load_split
from softmax_lightning.io import check_path

CLASSES_EN = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASSES_ZH = ("T恤", "裤子", "套头衫", "连衣裙", "外套", "凉鞋", "衬衫", "运动鞋", "包", "靴子")


def class_names(labels: str = "en") -> tuple[str, ...]:
    """The ten class names, in English (``"en"``) or the chapter's Chinese (``"zh"``)."""
    if labels not in ("en", "zh"):
        raise UserError(f"labels must be 'en' or 'zh', got {labels!r}")
    return CLASSES_ZH if labels == "zh" else CLASSES_EN


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
        idx = torch.from_numpy(np.asarray(indices))  # NumPy reads a list of ints 6x faster than torch
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
        self.epoch = epoch
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that Lightning can checkpoint in the middle of an epoch.

    Lightning saves a training loader's ``state_dict()`` in every checkpoint and hands it back with
    ``load_state_dict`` when it resumes (its interface for resumable loaders). The state is the epoch being iterated
    (its sampler's ``epoch``, which Lightning sets) and how many minibatches of it were handed out; when that epoch
    is iterated again, the loader first skips those. With the order a function of (seed, epoch), a run resumed from a
    checkpoint saved in the middle of an epoch (``val_check_interval``, ``every_n_train_steps``) sees exactly the
    minibatches of the uninterrupted run. (Lightning fetches a sized loader's batches one at a time, as it trains on
    them: the count handed out is the count trained on.)
    """

    _epoch: int | None = None
    _served = 0
    _resume_at: tuple[int | None, int] | None = None  # (epoch, minibatches already trained on), from a checkpoint

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", None)
        skip = self._resume_at[1] if self._resume_at and self._resume_at[0] == epoch else 0
        self._epoch, self._served, self._resume_at = epoch, skip, None
        batches = super().__iter__()
        for _ in range(skip):  # the checkpointed run already trained on these (gathering one costs ~0.1 ms)
            next(batches)
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int | None]:
        return {"epoch": self._epoch, "batches": self._served}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        self._resume_at = (state_dict["epoch"], int(state_dict["batches"]))


class EvalShard(DistributedSampler):
    """Rank ``r`` of ``w`` evaluates one contiguous ``1/w`` of a split, in order: every image exactly once.

    Lightning's own ``DistributedSampler`` for val/test pads the split with repeated images when ``w`` does not divide
    its size (10,000 on 3, 6 or 7 ranks), so accuracy and the confusion matrix would count some images twice. Being a
    ``DistributedSampler`` already, this one is left in place by Lightning. Rank 0 starts with the split's first images.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        self.start, self.stop = n * rank // num_replicas, n * (rank + 1) // num_replicas
        self.num_samples = self.total_size = self.stop - self.start  # (no padding)

    def __iter__(self):
        return iter(range(self.start, self.stop))


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST for the chapter: batch 256, train reshuffled every epoch, val/test in order.

    Args:
        data_dir: folder holding (or to hold) ``FashionMNIST/raw/``.
        batch_size: samples per minibatch (= per Lightning batch) *per device*; under DDP the global batch is
            ``batch_size * world_size``.
        val_size: 0 validates on the 10k test split, as the chapter does; ``N > 0`` holds out N seeded training
            images for validation. ``trainer.test`` always uses the test split.
        num_workers: ``DataLoader`` worker processes. 0 (the default) is fastest: batches are gathered from memory.
        seed: seeds the holdout split and every epoch's shuffle (``seed + epoch``).
        standardize: subtract the training split's mean pixel value and divide by its std (statistics from the
            training split only; saved in checkpoints through ``state_dict``).
        download: allow torchvision's download as the last way to get the files.

    The splits stay in CPU memory, and Lightning moves each minibatch to the model's device, so the data module
    works the same before any ``Trainer`` exists, during ``fit`` on any device, and after it.
    """

    dims = (1, 28, 28)  # one image
    pixels = 28 * 28  # inputs of the model
    num_classes = 10
    max_workers = 64  # DataLoader processes: more would only exhaust the machine

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 256,
        val_size: int = 0,
        num_workers: int = 0,
        seed: int = 0,
        standardize: bool = False,
        download: bool = True,
    ) -> None:
        super().__init__()
        check_path(data_dir, "--data.data_dir", "folder path")  # not empty, not too long for the system
        if not 1 <= batch_size <= MAX_ITEMS:
            raise UserError(
                f"batch_size must be >= 1 and <= {MAX_ITEMS} (the most images a split may hold), got "
                f"{batch_size} (--data.batch_size)"
            )
        if val_size < 0:
            raise UserError(f"val_size must be >= 0, got {val_size} (--data.val_size)")
        if val_size >= MAX_ITEMS:  # (setup checks it against the training set's real size)
            raise UserError(
                f"val_size must be smaller than the training set (at most {MAX_ITEMS} images), got "
                f"{val_size} (--data.val_size)"
            )
        if not 0 <= num_workers <= self.max_workers:
            raise UserError(f"num_workers must be in 0..{self.max_workers}, got {num_workers} (--data.num_workers)")
        if not 0 <= seed < 2**32:
            raise UserError(f"seed must be in 0..{2**32 - 1}, got {seed} (--seed_everything)")
        self.save_hyperparameters()
        self.train_set: InMemoryDataset | None = None
        self.val_set: InMemoryDataset | None = None
        self.test_set: InMemoryDataset | None = None
        self.input_stats: tuple[float, float] | None = None  # (mean, std) when standardize=True

    def prepare_data(self) -> None:
        """Find or fetch the IDX files (no state is set here: under DDP it runs on one process per node)."""
        find_raw_files(self.hparams.data_dir, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        """Parse both splits once, scale to [0, 1], carve the seeded holdout, standardise if asked."""
        if self.test_set is not None:
            return
        hp = self.hparams
        find_raw_files(hp.data_dir, download=False)  # prepare_data ran on another rank/node: check, don't fetch
        splits = {}
        for split in ("train", "test"):
            images, labels = load_split(hp.data_dir, split)
            splits[split] = (images.unsqueeze(1).float().div_(255), labels)  # (N, 28, 28) uint8 -> (N, 1, 28, 28)
        X, y = splits["train"]
        if hp.val_size >= len(y):
            raise UserError(
                f"val_size must be smaller than the training set ({len(y)}), got {hp.val_size} (--data.val_size)"
            )
        if hp.val_size:
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(hp.seed))
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
        if self.trainer is not None:
            self._check_batch_limits()

    def _check_batch_limits(self) -> None:
        """Refuse a fraction ``limit_<stage>_batches`` of the Trainer (``overfit_batches`` sets those too) that
        leaves a split no batch at all, now, before training: Lightning finds out only when that stage starts (the
        test split: after fitting)."""
        world, size = self.trainer.world_size, self.hparams.batch_size
        for stage, dataset in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)):
            batches = math.ceil(math.ceil(len(dataset) / world) / size)  # per process
            name = f"limit_{stage}_batches"
            fraction = getattr(self.trainer, name, None)
            if isinstance(fraction, float) and 0 < fraction < 1 and int(batches * fraction) == 0:
                raise UserError(
                    f"{name} {fraction:g} of the {batches} {stage} batches is none; pass a fraction of at "
                    f"least {1 / batches:.3g}, or a number of batches (--trainer.{name})"
                )

    def _loader(self, dataset: InMemoryDataset, shuffle: bool = False) -> DataLoader:
        """One loader factory for every split: train shuffles (``EpochShuffle``), the others keep the files' order
        (one contiguous shard per rank under DDP)."""
        workers, world = self.hparams.num_workers, self.trainer.world_size if self.trainer else 1
        if shuffle:
            sampler = EpochShuffle(dataset, self.hparams.seed)
        else:
            sampler = EvalShard(dataset, world, self.trainer.global_rank) if world > 1 else None
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.hparams.batch_size,
            collate_fn=as_batch,
            num_workers=workers,
            sampler=sampler,
            persistent_workers=workers > 0,
        )

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
