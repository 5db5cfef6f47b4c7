"""FashionMNISTDataModule on the real files: shapes, counts, order, holdout; the dataset's batched reads."""

import torch
from torch.utils.data import DataLoader, DistributedSampler

from softmax_lightning.data import (
    CLASSES_EN,
    CLASSES_ZH,
    EpochShuffle,
    EvalShard,
    FashionMNISTDataModule,
    InMemoryDataset,
    ResumableLoader,
    as_batch,
    class_names,
)
from softmax_lightning.fashion_mnist import load_split


def test_batches_shapes_ranges_and_counts(data_dir):
    dm = FashionMNISTDataModule(data_dir=str(data_dir))
    dm.prepare_data()
    dm.setup("fit")
    train, test = dm.train_dataloader(), dm.test_dataloader()
    assert isinstance(train, DataLoader) and isinstance(train.sampler, EpochShuffle)
    assert (len(train), len(test)) == (235, 40)  # one Lightning batch = one minibatch of 256
    X, y = next(iter(train))
    assert X.shape == (256, 1, 28, 28) and X.dtype == torch.float32
    assert y.shape == (256,) and y.dtype == torch.int64
    assert 0.0 <= float(X.min()) and float(X.max()) <= 1.0 and float(X.max()) > 0.9
    sizes = [len(y) for _, y in train]
    assert len(sizes) == 235 and sizes[-1] == 60000 - 234 * 256  # last partial batch kept
    assert sum(len(y) for _, y in test) == 10000
    assert dm.num_classes == 10 and dm.dims == (1, 28, 28)


def test_a_batch_is_one_gather_equal_to_per_sample_indexing():
    X, y = torch.randn(50, 1, 28, 28), torch.arange(50)
    ds = InMemoryDataset(X, y)
    idx = [7, 3, 3, 49, 0]
    Xb, yb = ds.__getitems__(idx)
    assert torch.equal(Xb, torch.stack([ds[i][0] for i in idx])) and torch.equal(yb, y[idx])
    loader = DataLoader(ds, batch_size=16, collate_fn=as_batch)
    assert [len(b[1]) for b in loader] == [16, 16, 16, 2] and torch.equal(torch.cat([b[1] for b in loader]), y)


def test_idx_parser_matches_torchvision(data_dir):
    from torchvision.datasets import FashionMNIST

    for split in ("train", "test"):
        images, labels = load_split(data_dir, split)
        ref = FashionMNIST(str(data_dir), train=split == "train", download=False)
        assert torch.equal(images, ref.data) and torch.equal(labels, ref.targets)


def test_val_is_the_test_split_by_default_and_a_seeded_holdout_otherwise(data_dir):
    dm = FashionMNISTDataModule(data_dir=str(data_dir))
    dm.setup("fit")
    assert dm.val_set.X is dm.test_set.X  # the same tensors, no copy
    held = [FashionMNISTDataModule(data_dir=str(data_dir), val_size=5000, seed=s) for s in (1, 1, 2)]
    for h in held:
        h.setup("fit")
    assert len(held[0].val_set) == 5000 and len(held[0].train_set) == 55000
    assert torch.equal(held[0].val_set.X, held[1].val_set.X)
    assert not torch.equal(held[0].val_set.X, held[2].val_set.X)
    assert len(held[0].test_set) == 10000


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    ds = InMemoryDataset(torch.zeros(1000, 1), torch.arange(1000))

    def order(seed, epoch):
        sampler = EpochShuffle(ds, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    torch.manual_seed(123)
    a = order(0, 3)
    torch.manual_seed(456)  # global RNG state must not matter
    assert a == order(0, 3) and sorted(a) == list(range(1000))
    assert a != order(0, 4) and a != order(1, 3)
    # the rule DistributedSampler uses (seed + epoch): a one-process DDP run sees the same order
    ddp = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    ddp.set_epoch(3)
    assert list(ddp) == a


def test_class_names():
    assert class_names("en")[0] == "T-shirt/top" and class_names("zh")[0] == "T恤"
    assert len(CLASSES_EN) == len(CLASSES_ZH) == 10


def test_the_holdout_and_the_training_split_partition_the_training_file(data_dir):
    """No image of the holdout is trained on (no leak), and together they are the whole file, once each."""
    dm = FashionMNISTDataModule(data_dir=str(data_dir), val_size=5000, seed=3)
    dm.setup("fit")
    images, _ = load_split(data_dir, "train")
    w = torch.randn(784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def fingerprints(X):  # one number per image, equal for equal images
        return sorted((X.reshape(len(X), -1).double() @ w).tolist())

    assert len(dm.val_set) == 5000 and len(dm.train_set) == 55000
    assert fingerprints(torch.cat([dm.val_set.X, dm.train_set.X])) == fingerprints(images.float().div(255))


def test_a_resumed_loader_skips_what_was_trained_and_keeps_counting():
    """The training loader's checkpointed state: a loader resumed mid-epoch serves the rest of that epoch only, and
    counts from where the checkpoint was, so a second checkpoint in the same epoch is right too; a checkpoint saved
    at an epoch's end skips nothing of the next epoch."""
    ds = InMemoryDataset(torch.zeros(100, 1), torch.arange(100))

    def loader(state=None, epoch=0) -> ResumableLoader:
        dl = ResumableLoader(ds, batch_size=10, sampler=EpochShuffle(ds, seed=0), collate_fn=as_batch)
        dl.sampler.set_epoch(epoch)  # (Lightning's call at every epoch's start)
        if state is not None:
            dl.load_state_dict(state)
        return dl

    epoch0 = [y.tolist() for _, y in loader()]
    first = loader()
    batches = iter(first)
    assert [next(batches)[1].tolist() for _ in range(3)] == epoch0[:3]
    assert first.state_dict() == {"epoch": 0, "batches": 3}  # what a checkpoint saved now holds
    resumed = loader(first.state_dict())
    batches = iter(resumed)
    assert [next(batches)[1].tolist() for _ in range(2)] == epoch0[3:5]  # the next ones, not the first ones again
    assert resumed.state_dict() == {"epoch": 0, "batches": 5}  # a second checkpoint in the same epoch
    assert [y.tolist() for _, y in batches] == epoch0[5:]
    epoch1 = [y.tolist() for _, y in loader(epoch=1)]
    assert [y.tolist() for _, y in loader({"epoch": 0, "batches": 10}, epoch=1)] == epoch1  # saved at epoch 0's end


def test_evaluation_shards_cover_every_image_once_in_order():
    """Under DDP, rank r of w evaluates one contiguous share: together, every image exactly once, in the files' order
    (10,000 images on 3, 6 or 7 ranks leave a remainder)."""
    ds = InMemoryDataset(torch.zeros(10000, 1), torch.arange(10000))
    for world in (1, 2, 3, 6, 7):
        shards = [list(EvalShard(ds, world, rank)) for rank in range(world)]
        assert [i for shard in shards for i in shard] == list(range(10000)), world
        assert [len(EvalShard(ds, world, rank)) for rank in range(world)] == [len(s) for s in shards]
