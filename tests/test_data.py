"""FashionMNISTDataModule on the real files: shapes, counts, order, sharding, holdout."""

import torch

from softmax_lightning.data import (CLASSES_EN, CLASSES_ZH, FashionMNISTDataModule, InMemoryLoader, class_names,
                                    MinibatchGroup, load_split, minibatches)


def test_batches_shapes_ranges_and_counts(data_dir):
    dm = FashionMNISTDataModule(data_dir=str(data_dir))  # steps_per_batch=16: 235 minibatches in 15 groups
    dm.prepare_data()
    dm.setup("fit")
    train, test = dm.train_dataloader(), dm.test_dataloader()
    assert (len(train), train.num_minibatches, len(test)) == (15, 235, 3)
    group = next(iter(train))
    assert isinstance(group, MinibatchGroup) and len(group) == 16
    assert group.to("cpu") is group  # already on the device: Lightning's transfer is free
    X, y = next(iter(group))
    assert X.shape == (256, 1, 28, 28) and X.dtype == torch.float32
    assert y.shape == (256,) and y.dtype == torch.int64
    assert 0.0 <= float(X.min()) and float(X.max()) <= 1.0 and float(X.max()) > 0.9
    sizes = [len(y) for g in train for _, y in minibatches(g)]
    assert len(sizes) == 235 and sizes[-1] == 60000 - 234 * 256  # last partial batch kept
    assert [len(g) for g in train][-1] == 235 - 14 * 16
    assert sum(len(y) for _, y in test) == 10000 and len(next(iter(test))[1]) == 16 * 256
    assert dm.num_classes == 10


def test_grouping_changes_nothing_but_the_packaging(data_dir):
    """steps_per_batch only packs minibatches: the same minibatches, same order, for every group size."""
    X, y = torch.arange(1000.0).reshape(1000, 1), torch.arange(1000)
    flat = []
    for group in (1, 3, 16):
        ld = InMemoryLoader(X, y, 64, shuffle=True, seed=5, group=group)
        ld.set_epoch(2)
        flat.append([b for item in ld for _, b in minibatches(item)])
        assert len(ld) == -(-16 // group) and ld.num_minibatches == 16
    for other in flat[1:]:
        assert len(other) == len(flat[0]) and all(torch.equal(a, b) for a, b in zip(flat[0], other))


def test_idx_parser_matches_torchvision(data_dir):
    from torchvision.datasets import FashionMNIST

    for split in ("train", "test"):
        images, labels = load_split(data_dir, split)
        ref = FashionMNIST(str(data_dir), train=split == "train", download=False)
        assert torch.equal(images, ref.data) and torch.equal(labels, ref.targets)


def test_val_is_the_test_split_by_default_and_a_seeded_holdout_otherwise(data_dir):
    dm = FashionMNISTDataModule(data_dir=str(data_dir))
    dm.setup("fit")
    assert dm.splits["val"][0] is dm.splits["test"][0]
    held = [FashionMNISTDataModule(data_dir=str(data_dir), val_size=5000, seed=s) for s in (1, 1, 2)]
    for h in held:
        h.setup("fit")
    assert len(held[0].splits["val"][1]) == 5000 and len(held[0].splits["train"][1]) == 55000
    assert torch.equal(held[0].splits["val"][0], held[1].splits["val"][0])
    assert not torch.equal(held[0].splits["val"][0], held[2].splits["val"][0])
    assert len(held[0].splits["test"][1]) == 10000


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    X, y = torch.arange(1000.0).reshape(1000, 1), torch.arange(1000)

    def first_batch(seed, epoch):
        ld = InMemoryLoader(X, y, 100, shuffle=True, seed=seed)
        ld.set_epoch(epoch)
        return next(iter(ld))[1]

    torch.manual_seed(123)
    a = first_batch(0, 3)
    torch.manual_seed(456)  # global RNG state must not matter
    assert torch.equal(a, first_batch(0, 3))
    assert not torch.equal(a, first_batch(0, 4))
    assert not torch.equal(a, first_batch(1, 3))
    ordered = InMemoryLoader(X, y, 100, shuffle=False)
    assert torch.equal(torch.cat([b for _, b in ordered]), y)


def test_ddp_shards_are_disjoint_and_equal():
    X, y = torch.zeros(1001, 1), torch.arange(1001)
    for shuffle in (True, False):
        shards = []
        for rank in range(2):
            ld = InMemoryLoader(X, y, 64, shuffle=shuffle, seed=7, rank=rank, world_size=2)
            ld.set_epoch(5)
            shards.append(torch.cat([b for _, b in ld]))
        assert not set(shards[0].tolist()) & set(shards[1].tolist())
        if shuffle:  # equal step counts on every rank; the remainder sample is dropped this epoch
            assert len(shards[0]) == len(shards[1]) == 500
        else:  # evaluation covers every sample exactly once
            assert sorted(torch.cat(shards).tolist()) == list(range(1001))


def test_class_names():
    assert class_names("en")[0] == "T-shirt/top" and class_names("zh")[0] == "T恤"
    assert len(CLASSES_EN) == len(CLASSES_ZH) == 10
