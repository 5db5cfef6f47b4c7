"""SoftmaxRegression through the Trainer: initial state, smoke runs, step counting."""

import ast
import inspect

import lightning as L
import torch

from softmax_lightning import functional, model, optim
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.model import SoftmaxRegression


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kw)


def test_init_is_the_chapters():
    torch.manual_seed(0)
    m = SoftmaxRegression()
    assert m.W.shape == (784, 10) and m.b.shape == (10,)
    assert (m.b == 0).all()
    assert abs(float(m.W.std()) - 0.01) < 0.001 and abs(float(m.W.mean())) < 0.001
    assert m.automatic_optimization is False
    assert m.hparams.lr == 0.1 and m.hparams.init_std == 0.01


def test_untrained_model_scores_about_chance(data_dir):
    torch.manual_seed(0)
    res = _trainer().test(SoftmaxRegression(), datamodule=FashionMNISTDataModule(data_dir=str(data_dir)),
                          verbose=False)
    assert 0.03 < res[0]["test_acc"] < 0.25


def test_fast_dev_run(data_dir):
    m = SoftmaxRegression()
    W0 = m.W.detach().clone()
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.global_step == 1 and not torch.equal(W0, m.W.detach())


def test_global_step_counts_the_hand_written_sgd_steps(data_dir):
    trainer = _trainer(max_epochs=2)
    m = SoftmaxRegression()
    trainer.fit(m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.global_step == 235 * 2
    assert [row["epoch"] for row in m.history] == [1, 2]
    assert m.history[1]["train_loss"] < m.history[0]["train_loss"]


def test_overfit_one_batch(data_dir):
    m = SoftmaxRegression(lr=1.0)
    trainer = _trainer(max_epochs=150, overfit_batches=1, limit_val_batches=0)
    trainer.fit(m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert m.history[-1]["train_acc"] > 0.95


def test_hand_written_parts_call_no_torch_shortcuts():
    forbidden = {"softmax", "log_softmax", "cross_entropy", "Linear", "SGD"}
    for mod in (functional, model, optim):
        tree = ast.parse(inspect.getsource(mod))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in forbidden:
                base = ast.unparse(node.value)
                assert base not in ("torch", "nn", "torch.nn", "TF", "torch.nn.functional", "torch.optim"), \
                    f"{mod.__name__} uses {base}.{node.attr}"


def test_minibatch_groups_train_exactly_like_single_minibatches(data_dir):
    """steps_per_batch is packaging only: the same SGD steps, bit for bit, cosine schedule and momentum included."""
    weights, steps = [], []
    for k in (1, 16):
        torch.manual_seed(0)
        m = SoftmaxRegression(lr=0.05, momentum=0.9, nesterov=True, lr_schedule="cosine")
        trainer = _trainer(max_epochs=2, limit_val_batches=0)
        trainer.fit(m, datamodule=FashionMNISTDataModule(data_dir=str(data_dir), steps_per_batch=k))
        weights.append(torch.cat([m.W.detach().flatten(), m.b.detach()]))
        steps.append((trainer.global_step, m.samples_seen, trainer.optimizers[0].param_groups[0]["lr"]))
    assert torch.equal(weights[0], weights[1])
    assert steps[0] == steps[1] == (2 * 235, 2 * 60000, 0.0)  # the cosine reaches 0 on the last step


def test_max_steps_counts_sgd_steps_inside_a_group(data_dir):
    trainer = _trainer(max_steps=20, limit_val_batches=0)
    trainer.fit(SoftmaxRegression(), datamodule=FashionMNISTDataModule(data_dir=str(data_dir)))
    assert trainer.global_step == 20
