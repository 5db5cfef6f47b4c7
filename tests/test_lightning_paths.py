"""The paths a Lightning user takes next, in their own Trainer: their own checkpoints, resuming from any checkpoint
Lightning saves, mixed and half precision, the data module after fit, and the SGD step on every path."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision

from softmax_lightning import functional as F
from softmax_lightning.callbacks import ChapterFigures
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError
from softmax_lightning.model import SoftmaxRegression
from softmax_lightning.optim import ChapterSGD
from tests.conftest import DATA_DIR, quiet_trainer, run_dirs, run_train


def _data(**kw) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(data_dir=str(DATA_DIR), **kw)


class Steps(L.Callback):
    """Every training step as a user's callback sees it: W and b before and after, the batch, the lr, and whether
    each backward started from zero gradients."""

    def __init__(self) -> None:
        self.before: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.after: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.lrs: list[float] = []
        self.clean_backward: list[bool] = []

    @staticmethod
    def _params(m) -> tuple[torch.Tensor, torch.Tensor]:
        return m.W.detach().clone(), m.b.detach().clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(self._params(pl_module))
        self.batches.append((batch[0].clone(), batch[1].clone()))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.clean_backward.append(all(p.grad is None or not p.grad.any() for p in (pl_module.W, pl_module.b)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(self._params(pl_module))


def _sgd_by_hand(W, b, X, y, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The chapter's step on one minibatch, in float32: ``param -= lr * grad(l.sum()) / len(y)``."""
    W, b = W.clone().requires_grad_(), b.clone().requires_grad_()
    F.cross_entropy(X.reshape(-1, 784).float() @ W + b, y).sum().backward()
    return (W - lr * W.grad / len(y)).detach(), (b - lr * b.grad / len(y)).detach()


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    "kwargs,names",
    [
        ({}, ["epoch=0-step=25.ckpt", "epoch=1-step=50.ckpt", "epoch=2-step=75.ckpt"]),
        ({"every_n_train_steps": 10}, [f"epoch={(s - 1) // 25}-step={s}.ckpt" for s in range(10, 80, 10)]),
    ],
)
def test_a_users_model_checkpoint_writes_the_names_lightning_documents(tmp_path, data_dir, kwargs, names):
    """``{epoch}`` and ``{step}`` are Lightning's own (``step`` = the global step): nothing the module logs may
    shadow them, or saves of one epoch would share a name and overwrite each other."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, **kwargs)  # default filename: "{epoch}-{step}"
    trainer = quiet_trainer(
        max_epochs=3,
        limit_train_batches=25,
        limit_val_batches=2,
        enable_checkpointing=True,
        callbacks=[ckpt, ChapterFigures()],
    )
    trainer.fit(SoftmaxRegression(), datamodule=_data())
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == sorted(names)
    assert "step" not in trainer.logged_metrics and "step" not in trainer.callback_metrics


SHORT = ["--trainer.max_epochs=4", "--trainer.limit_train_batches=20", "--trainer.limit_val_batches=4"]
KEEP_ALL = [
    "--trainer.callbacks+=ModelCheckpoint",
    "--trainer.callbacks.save_top_k=-1",
    "--trainer.callbacks.save_last=true",
]
TIMINGS = {"train_seconds", "checkpoint", "run_dir"}


def _comparable(metrics: dict) -> dict:
    out = {k: v for k, v in metrics.items() if k not in TIMINGS}
    out["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["history"]]
    return out


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # (a copied run folder)
@pytest.mark.filterwarnings("ignore:The dirpath has changed from")  # (the same: the copy's checkpoints are used)
@pytest.mark.parametrize(
    "case,args,resume_from",
    [
        ("sparse validation", ["--trainer.check_val_every_n_epoch=2"], "epoch=1-step=40.ckpt"),  # at validation end
        ("validation twice an epoch", ["--trainer.val_check_interval=0.5"], "epoch=1-step=30.ckpt"),  # mid-epoch
        ("every n train steps", ["--trainer.callbacks.every_n_train_steps=15"], "epoch=1-step=30.ckpt"),  # mid-epoch
        ("no validation", ["--trainer.limit_val_batches=0"], "epoch=1-step=40.ckpt"),  # at the epoch's end
    ],
)
def test_a_resume_from_any_checkpoint_lightning_saves_ends_like_the_uninterrupted_run(
    tmp_path, data_dir, case, args, resume_from
):
    """A user's ModelCheckpoint keeps every save; resuming a copy of the run from an early one must end with the same
    metrics.json (history included), weights and figures as the run that was never interrupted."""
    done = run_train(tmp_path / "run", *SHORT, *KEEP_ALL, *args)
    run = Path(done["run_dir"])
    for ckpt in (run / "checkpoints").glob("epoch=*.ckpt"):  # each save holds every epoch ended before it
        state = torch.load(ckpt, weights_only=True)
        rows = state["callbacks"]["ChapterFigures"]["history"]
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)), ckpt.name
        assert len(rows) >= state["epoch"], ckpt.name
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    copied = run_dirs(copy)[-1]
    figures = [f for f in ("curves.png", "predictions.png", "weights.png", "confusion.png") if (run / f).is_file()]
    for name in ("metrics.json", *figures):
        (copied / name).unlink()
    resumed = run_train(copy, f"--ckpt_path={copied / 'checkpoints' / resume_from}")
    assert resumed["run_dir"] == str(copied) and len(run_dirs(copy)) == 1  # continued in its own folder
    assert _comparable(resumed) == _comparable(done), case
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in (run, copied))
    assert torch.equal(a["W"], b["W"]) and torch.equal(a["b"], b["b"])
    for name in figures:
        assert (copied / name).read_bytes() == (run / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------------- precision
def test_a_step_skipped_by_the_grad_scaler_leaves_no_stale_gradient(data_dir):
    """16-mixed: an enormous initial loss scale makes the first steps overflow, and the grad scaler skips them. Every
    backward must still start from zero gradients, so that once the scale is small enough the model learns, and the
    first step taken is exactly a clean step."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    steps, m = Steps(), SoftmaxRegression()
    quiet_trainer(
        max_steps=80, limit_val_batches=0, plugins=[MixedPrecision("16-mixed", "cpu", scaler)], callbacks=[steps]
    ).fit(m, datamodule=_data())
    skipped = [torch.equal(a[0], b[0]) for a, b in zip(steps.before, steps.after)]
    first = skipped.index(False)
    assert first >= 5 and all(skipped[:first]) and not any(skipped[first + 5 :])  # skipped, then learning
    assert all(steps.clean_backward)
    W, b = _sgd_by_hand(*steps.before[first], *steps.batches[first], lr=0.1)
    torch.testing.assert_close(steps.after[first][0], W, rtol=0, atol=1e-5)  # (the logits were float16)
    torch.testing.assert_close(steps.after[first][1], b, rtol=0, atol=1e-5)
    assert scaler.get_scale() >= 1 and torch.isfinite(m.W).all()


def test_a_step_skipped_by_the_grad_scaler_does_not_advance_the_lr_schedule(data_dir):
    """16-mixed with cosine: the schedule counts updates applied, so the first update after the skipped steps takes
    the initial lr, and PyTorch's warning about a scheduler stepped before its optimizer never comes."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    steps, m = Steps(), SoftmaxRegression(lr_schedule="cosine")
    trainer = quiet_trainer(
        max_steps=40, limit_val_batches=0, plugins=[MixedPrecision("16-mixed", "cpu", scaler)], callbacks=[steps]
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Detected call of `lr_scheduler.step\(\)` before")
        trainer.fit(m, datamodule=_data())
    first = [torch.equal(a[0], b[0]) for a, b in zip(steps.before, steps.after)].index(False)
    assert first >= 5 and steps.lrs[: first + 1] == [0.1] * (first + 1)  # skipped steps leave the lr at its start
    updates = trainer.optimizers[0].updates
    assert updates == 40 - first and trainer.lr_scheduler_configs[0].scheduler.last_epoch == updates


def test_the_weights_must_be_in_a_checkpoint_the_module_loads(tmp_path):
    """Only the train metrics' sums may be missing (a checkpoint from before they were saved): a checkpoint without
    ``W`` fails Lightning's strict loading instead of leaving the random initial ``W`` in place."""
    m = SoftmaxRegression()
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("metrics.train_")}
    ckpt = {"state_dict": state, "hyper_parameters": dict(m.hparams), "pytorch-lightning_version": L.__version__}
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert torch.equal(SoftmaxRegression.load_from_checkpoint(tmp_path / "old.ckpt").W, m.W)
    del state["W"]
    torch.save(ckpt, tmp_path / "no_w.ckpt")
    with pytest.raises(RuntimeError, match='Missing key.*"W"'):
        SoftmaxRegression.load_from_checkpoint(tmp_path / "no_w.ckpt")


def test_bf16_mixed_learns_on_the_cpu(data_dir):
    m = SoftmaxRegression()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=60, limit_val_batches=5, precision="bf16-mixed")
    trainer.fit(m, datamodule=_data())
    assert m.W.dtype == torch.float32 and torch.isfinite(m.W).all()  # float32 weights, bfloat16 arithmetic
    assert float(trainer.callback_metrics["val_acc"]) > 0.6


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_precision_weights_are_refused_before_any_step(data_dir, precision):
    m = SoftmaxRegression()
    with pytest.raises(UserError, match="rounds away"):
        quiet_trainer(max_steps=3, limit_val_batches=0, precision=precision).fit(m, datamodule=_data())


def test_true_half_precision_is_one_line_from_the_command_line(tmp_path, data_dir, capsys):
    from softmax_lightning.cli import main
    from tests.conftest import one_error_line, train_args

    assert main(train_args(tmp_path, "--trainer.precision=bf16-true", "--trainer.max_steps=2")) == 2
    one_error_line(capsys.readouterr().err, "bfloat16", "--trainer.precision bf16-mixed")
    assert not run_dirs(tmp_path)


# ---------------------------------------------------------------------------------------------------- the SGD step
@pytest.mark.parametrize(
    "hp",
    [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}, {"weight_decay": 1e-3}, {"lr_schedule": "cosine"}],
)
def test_every_backward_starts_from_zero_gradients_and_every_step_leaves_them_zero(data_dir, hp):
    steps, m = Steps(), SoftmaxRegression(**hp)
    quiet_trainer(max_steps=6, limit_val_batches=0, callbacks=[steps]).fit(m, datamodule=_data())
    assert len(steps.clean_backward) == 6 and all(steps.clean_backward)
    assert all(p.grad is None or not p.grad.any() for p in (m.W, m.b))


def test_the_last_odd_sized_minibatch_takes_the_chapters_step(data_dir):
    """The epoch's last minibatch holds 96 images: its update divides by 96, not by the batch size 256."""
    steps, m = Steps(), SoftmaxRegression()
    quiet_trainer(max_epochs=1, limit_val_batches=0, callbacks=[steps]).fit(m, datamodule=_data())
    X, y = steps.batches[-1]
    assert len(y) == 96
    W, b = _sgd_by_hand(*steps.before[-1], X, y, lr=0.1)
    torch.testing.assert_close(steps.after[-1][0], W, rtol=0, atol=1e-7)
    torch.testing.assert_close(steps.after[-1][1], b, rtol=0, atol=1e-7)


def test_configure_optimizers_passes_on_every_hyper_parameter():
    m = SoftmaxRegression(lr=0.3, momentum=0.7, nesterov=True, weight_decay=0.02)
    opt = m.configure_optimizers()
    assert isinstance(opt, ChapterSGD) and [p for g in opt.param_groups for p in g["params"]] == [m.W, m.b]
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.3, 0.7, True, 0.02)


def test_the_cosine_schedule_is_half_the_lr_at_its_midpoint_and_zero_at_its_end(data_dir):
    steps, m = Steps(), SoftmaxRegression(lr=0.2, lr_schedule="cosine")
    trainer = quiet_trainer(max_steps=40, limit_val_batches=0, callbacks=[steps])
    trainer.fit(m, datamodule=_data())
    assert steps.lrs[0] == 0.2 and math.isclose(steps.lrs[20], 0.1, rel_tol=1e-12)  # after 20 of 40 steps
    assert math.isclose(steps.lrs[10], 0.1 * (1 + math.cos(math.pi / 4)), rel_tol=1e-12)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0
    for i in (10, 20, 39):  # and the steps take the scheduled lr (0.17, 0.1, 0.0003), not the initial 0.2
        W, b = _sgd_by_hand(*steps.before[i], *steps.batches[i], lr=steps.lrs[i])
        torch.testing.assert_close(steps.after[i][0], W, rtol=0, atol=1e-7)
        torch.testing.assert_close(steps.after[i][1], b, rtol=0, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # (no checkpoints are needed)
def test_a_cosine_run_refuses_a_resume_that_would_change_its_length(tmp_path, data_dir):
    """The schedule's length is saved with the run: resumed with more epochs, the lr would jump from 0 (where the
    finished run left it) to the middle of a longer curve, so the resume is refused before any step."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    m = SoftmaxRegression(lr_schedule="cosine")
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=6, limit_val_batches=0, callbacks=[ckpt], enable_checkpointing=True
    )
    trainer.fit(m, datamodule=_data())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["cosine_schedule_steps"] == 6
    steps, m = Steps(), SoftmaxRegression(lr_schedule="cosine")
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=6, limit_val_batches=0, callbacks=[steps])
    with pytest.raises(UserError, match="cosine schedule spans 6 SGD steps, but this Trainer would run 12"):
        trainer.fit(m, datamodule=_data(), ckpt_path=tmp_path / "last.ckpt")
    assert not steps.before  # refused before the first step
    # a new run from those weights (not a resume) plans its own schedule, of any length
    m = SoftmaxRegression.load_from_checkpoint(tmp_path / "last.ckpt")
    quiet_trainer(max_epochs=2, limit_train_batches=6, limit_val_batches=0, callbacks=[steps]).fit(
        m, datamodule=_data()
    )
    assert len(steps.before) == 12 and steps.lrs[0] == 0.1 and math.isclose(steps.lrs[6], 0.05, rel_tol=1e-9)


# ---------------------------------------------------------------------------------------------------- devices
def test_the_data_module_is_usable_before_and_after_fit(data_dir):
    """The splits stay in CPU memory and Lightning moves each batch, so a data module set up before any Trainer
    exists (the notebook) and reused after fit (exercise 4) meets the model on the same device."""
    dm = _data()
    dm.setup()
    m = SoftmaxRegression()
    quiet_trainer(max_steps=3, limit_val_batches=1).fit(m, datamodule=dm)
    assert dm.test_set.X.device.type == "cpu" and m.W.device.type == "cpu"
    with torch.no_grad():
        assert m(dm.test_set.X[:8]).shape == (8, 10)


def test_a_metrics_json_records_what_validation_ran_on(tmp_path, data_dir):
    m = run_train(
        tmp_path, "--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2"
    )
    assert m["validated_on"] == "test split" and m["world_size"] == 1
    assert json.loads((Path(m["run_dir"]) / "metrics.json").read_text())["epochs"] == 1
