"""SoftmaxRegression and FashionMNISTDataModule in a user's own Trainer: the chapter's init, and Lightning's own
conventions (one batch = one minibatch = one SGD step) as a Lightning user meets them."""

import ast
import inspect
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.tuner import Tuner

from softmax_lightning import functional, model, optim
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.model import SoftmaxRegression
from tests.conftest import quiet_trainer


class BatchSpy(L.Callback):
    """What a user's callback sees of each training batch, and when validation runs."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, tuple, int]] = []  # (batch_idx, X.shape, len(y))
        self.val_at: list[int] = []  # global_step when a validation run starts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x, y = batch  # one (X, y) minibatch, as Lightning users expect
        self.batches.append((batch_idx, tuple(x.shape), len(y)))
        assert math.isfinite(float(outputs["loss"]))  # training_step returns the mean loss

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_at.append(trainer.global_step)


def test_init_is_the_chapters():
    torch.manual_seed(0)
    m = SoftmaxRegression()
    torch.manual_seed(0)
    W = torch.normal(0, 0.01, size=(784, 10))  # the chapter's cell
    assert torch.equal(m.W.detach(), W) and m.W.is_contiguous()
    assert torch.equal(m.b.detach(), torch.zeros(10))
    assert m.automatic_optimization is False
    assert m.hparams.lr == 0.1 and m.hparams.init_std == 0.01


def test_untrained_model_scores_about_chance(data_dir):
    torch.manual_seed(0)
    res = quiet_trainer().test(
        SoftmaxRegression(), datamodule=FashionMNISTDataModule(data_dir=str(data_dir)), verbose=False
    )
    assert 0.03 < res[0]["test_acc"] < 0.25


def test_one_epoch_is_235_batches_each_one_minibatch_and_one_sgd_step(data_dir):
    spy, m = BatchSpy(), SoftmaxRegression()
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, callbacks=[spy])
    trainer.fit(m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.num_training_batches == 235 and trainer.global_step == 235
    assert [i for i, _, _ in spy.batches] == list(range(235))
    assert all(shape == (256, 1, 28, 28) for _, shape, _ in spy.batches[:-1])
    assert spy.batches[-1][2] == 96  # the last partial minibatch is kept: 60000 - 234 * 256


def test_estimated_stepping_batches_counts_sgd_steps(data_dir):
    trainer = quiet_trainer(max_epochs=3)
    trainer.fit(
        SoftmaxRegression(),
        datamodule=FashionMNISTDataModule(data_dir=str(data_dir)),
    )
    assert trainer.estimated_stepping_batches == 3 * 235  # what a user's OneCycleLR would span


def test_limit_train_batches_and_val_check_interval(data_dir):
    spy = BatchSpy()
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=120, val_check_interval=50, limit_val_batches=2, callbacks=[spy]
    )
    trainer.fit(SoftmaxRegression(), datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.global_step == 120 and len(spy.batches) == 120
    assert spy.val_at == [50, 100]

    spy = BatchSpy()
    quiet_trainer(max_epochs=1, val_check_interval=0.25, limit_val_batches=1, callbacks=[spy]).fit(
        SoftmaxRegression(), datamodule=FashionMNISTDataModule(data_dir=str(data_dir))
    )
    assert spy.val_at == [58, 116, 174, 232]  # four times an epoch: every int(0.25 * 235) = 58 batches


def test_fast_dev_run_runs_n_batches_and_validation(data_dir):
    spy, m = BatchSpy(), SoftmaxRegression()
    W0 = m.W.detach().clone()
    trainer = L.Trainer(fast_dev_run=5, callbacks=[spy], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.global_step == 5 and len(spy.batches) == 5 and spy.val_at == [5]
    assert not torch.equal(W0, m.W.detach())


def test_step_based_checkpoints_and_max_steps(tmp_path, data_dir):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=100, save_top_k=-1, filename="{step}")
    trainer = quiet_trainer(max_steps=250, limit_val_batches=0, enable_checkpointing=True, callbacks=[ckpt])
    trainer.fit(SoftmaxRegression(), datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.global_step == 250
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step=100.ckpt", "step=200.ckpt"]


def test_precision_64_converts_the_batches(data_dir):
    class DtypeSpy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            assert batch[0].dtype == torch.float64 and pl_module.W.dtype == torch.float64

    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=1, precision="64-true", callbacks=[DtypeSpy()]
    )
    trainer.fit(SoftmaxRegression(), datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.global_step == 3 and math.isfinite(float(trainer.callback_metrics["val_loss"]))


@pytest.mark.filterwarnings("ignore:You requested to overfit:UserWarning")  # Lightning's documented behaviour
def test_overfit_one_batch(data_dir):
    m = SoftmaxRegression(lr=1.0)
    trainer = quiet_trainer(max_epochs=150, overfit_batches=1, limit_val_batches=0)
    trainer.fit(m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.num_training_batches == 1 and trainer.global_step == 150
    assert float(trainer.callback_metrics["train_acc"]) > 0.95


def test_reload_dataloaders_and_workers_keep_the_same_steps(data_dir):
    """The shuffle order is a function of (seed, epoch): rebuilt loaders and worker processes see the same
    minibatches, so the weights come out bit-identical."""
    weights = []
    for kw, workers in (({}, 0), ({"reload_dataloaders_every_n_epochs": 1}, 0), ({}, 1)):
        torch.manual_seed(0)
        m = SoftmaxRegression()
        quiet_trainer(max_epochs=2, limit_train_batches=20, limit_val_batches=0, **kw).fit(
            m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir), num_workers=workers)
        )
        weights.append(torch.cat([m.W.detach().flatten(), m.b.detach()]))
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])


def test_the_lr_finder_reads_the_step_loss(data_dir):
    m = SoftmaxRegression()
    finder = Tuner(quiet_trainer(max_epochs=1)).lr_find(
        m,
        datamodule=FashionMNISTDataModule(data_dir=str(data_dir)),
        min_lr=1e-3,
        max_lr=10.0,
        num_training=30,
        update_attr=False,
    )
    losses = finder.results["loss"]
    assert len(losses) >= 10 and all(math.isfinite(v) for v in losses[:10])  # (it stops early once the loss blows up)
    assert finder.suggestion() is not None and 1e-3 <= finder.suggestion() <= 10.0


def test_cosine_schedule_reaches_zero_on_the_last_step(data_dir):
    m = SoftmaxRegression(lr=0.05, momentum=0.9, nesterov=True, lr_schedule="cosine")
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=30, limit_val_batches=0)
    trainer.fit(m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.global_step == 60 and trainer.optimizers[0].param_groups[0]["lr"] == 0.0


def test_hand_written_parts_call_no_torch_shortcuts():
    """No ``.softmax`` / ``.log_softmax`` / ``.cross_entropy`` / ``Linear`` / ``SGD`` attribute of anything (so neither
    ``torch.softmax`` nor ``X.softmax(1)``), and no import from ``torch.nn.functional`` or ``torch.optim``'s classes."""
    forbidden = {"softmax", "log_softmax", "cross_entropy", "Linear", "SGD"}
    for mod in (functional, model, optim):
        for node in ast.walk(ast.parse(inspect.getsource(mod))):
            if isinstance(node, ast.Attribute) and not ast.unparse(node.value).endswith("hparams"):  # the option
                assert node.attr not in forbidden, f"{mod.__name__} uses {ast.unparse(node)}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                names = {a.name for a in node.names}
                assert node.module != "torch.nn.functional" and not names & forbidden, (
                    f"{mod.__name__} imports {names} from {node.module}"
                )


@pytest.mark.parametrize("name", ["data", "callbacks"])
def test_the_model_does_not_know_the_data_module_and_callbacks_use_public_names(name):
    import importlib

    if name == "data":
        assert "softmax_lightning.data" not in inspect.getsource(model)
        return
    source = inspect.getsource(importlib.import_module(f"softmax_lightning.{name}"))
    for private in ("pl_module._", "trainer._", "datamodule._", ".splits", ".history"):
        assert private not in source.replace("self.history", ""), private


def _one_hot_pixel_model(softmax: str, logit: float) -> SoftmaxRegression:
    """A model whose logit for class 3 is ``logit`` on an image with pixel 0 lit, 0 for every other class."""
    m = SoftmaxRegression(softmax=softmax)
    with torch.no_grad():
        m.W.zero_()
        m.W[0, 3] = logit
    return m


def test_the_softmax_option_chooses_the_stable_path_or_the_chapters_cells():
    """``softmax="stable"`` (the default) gives finite probabilities and losses at a logit of 1000, in ``forward``
    and in the training loss; ``"naive"`` is the chapter's cells, which overflow there (exercises 1-2)."""
    X = torch.zeros(2, 784)
    X[:, 0] = 1.0  # logits: 1000 for class 3, 0 for the others
    y = torch.tensor([3, 0])
    stable, naive = _one_hot_pixel_model("stable", 1000.0), _one_hot_pixel_model("naive", 1000.0)
    with torch.no_grad():
        p, loss = stable(X), stable.loss(stable.logits(X), y)
        assert torch.isfinite(p).all() and torch.equal(p[:, 3], torch.ones(2))
        torch.testing.assert_close(loss, torch.tensor([0.0, 1000.0]))  # -log p(true): 0, and 1000 - 0
        assert not torch.isfinite(naive(X)).all()  # exp(1000) = inf: inf / inf
        assert not torch.isfinite(naive.loss(naive.logits(X), y)).all()


def test_the_guard_stops_a_finite_loss_whose_gradient_is_not_finite():
    """The chapter's naive path at p(true) = e^-100 (a float32 subnormal): the loss is a finite 102, its gradient is
    nan (1 / p overflows). The step must not be applied: W stays as it was, and the message says why."""
    from torch.utils.data import DataLoader, TensorDataset

    if torch.exp(torch.tensor(-100.0)) == 0:
        pytest.skip("this CPU flushes subnormal floats to zero: the loss is inf there, not finite")
    m = _one_hot_pixel_model("naive", -100.0)
    X = torch.zeros(4, 784)
    X[:, 0] = 1.0
    W0 = m.W.detach().clone()
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    with pytest.raises(model.NonFiniteLossError, match=r"the gradient is not finite \(the mean loss is still 102"):
        trainer.fit(m, train_dataloaders=DataLoader(TensorDataset(X, torch.full((4,), 3)), batch_size=4))
    assert torch.equal(m.W.detach(), W0)
