"""Exact resume after SIGKILL, determinism, and DDP on 2 CPU processes, all on the real data."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from softmax_lightning import functional as F
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError
from tests.conftest import DATA_DIR, ROOT, run_train, train_args

TIMING_KEYS = {"train_seconds", "checkpoint", "history"}


def _train_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "scripts/train.py", *train_args(root, *args)]


RENDEZVOUS_ERRORS = (
    b"Address already in use",
    b"Connection refused",
    b"Connection reset",
    b"DistNetworkError",
    b"Gloo connectFullMesh failed",
)


def _run_ddp(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a 2-process job; retry once only if the ranks failed to meet (a port race), never on other errors."""
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=600, **kw)
    if res.returncode != 0 and any(e in res.stderr for e in RENDEZVOUS_ERRORS):
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=600, **kw)
    return res


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """W and b of a run folder's last.ckpt."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: state[k] for k in ("W", "b")}


def _comparable(metrics: dict) -> dict:
    """metrics.json without what differs between identical runs (paths, wall times)."""
    out = {k: v for k, v in metrics.items() if k not in TIMING_KEYS | {"run_dir"}}
    out["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["history"]]
    return out


@pytest.mark.parametrize("recipe", [[], ["--config=configs/tuned.yaml"]], ids=["chapter", "tuned"])
def test_kill_during_epoch_3_then_resume_is_bitwise_identical(tmp_path, data_dir, recipe):
    """SIGKILL in the middle of epoch 3, then ``--ckpt_path last``: the same weights, bit for bit, and the same
    metrics.json as a run never interrupted; the tuned recipe's momentum, Nesterov and cosine schedule included."""
    # more steps per epoch (batch 64), 400 of them: long enough to kill inside epoch 3, short enough for make test
    recipe = [*recipe, "--trainer.max_epochs=4", "--data.batch_size=64", "--trainer.limit_train_batches=400"]
    recipe += ["--seed_everything=3"]
    ref = subprocess.run(_train_cmd(tmp_path / "ref", *recipe), cwd=ROOT, capture_output=True, timeout=600)
    assert ref.returncode == 0, ref.stderr.decode()[-2000:]

    logs = tmp_path / "killed"
    run = logs / "lightning_logs" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_train_cmd(logs, *recipe), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, epoch_done, seen = time.time() + 900, None, None
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and ckpt.stat().st_mtime != seen:
                seen = ckpt.stat().st_mtime
                epoch_done = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]
                if epoch_done == 1:  # epochs 1 and 2 are done: epoch 3 is running now
                    t_epoch = seen - (run / "config.yaml").stat().st_mtime
                    time.sleep(min(1.0, t_epoch / 4))  # well inside epoch 3
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1, "the kill should land during epoch 3"
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run(_train_cmd(logs, *recipe, "--ckpt_path=last"), cwd=ROOT, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert not (logs / "lightning_logs" / "version_1").exists()  # resumed into the same run folder
    ref_run = tmp_path / "ref" / "lightning_logs" / "version_0"
    a, b = _weights(ref_run), _weights(run)
    for k in ("W", "b"):
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    ma = json.loads((ref_run / "metrics.json").read_text())
    mb = json.loads((run / "metrics.json").read_text())
    assert _comparable(ma) == _comparable(mb)


def test_same_seed_same_run_other_seed_other_weights(tmp_path, data_dir):
    runs = [
        run_train(
            tmp_path / f"r{i}",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=60",
            f"--seed_everything={seed}",
        )
        for i, seed in enumerate((5, 5, 6))
    ]
    assert _comparable(runs[0]) == _comparable(runs[1])
    w = [_weights(Path(r["run_dir"])) for r in runs]
    assert torch.equal(w[0]["W"], w[1]["W"]) and torch.equal(w[0]["b"], w[1]["b"])
    assert not torch.equal(w[0]["W"], w[2]["W"])
    assert [r["train_loss"] for r in runs[0]["history"]] != [r["train_loss"] for r in runs[2]["history"]]


def test_a_ddp_epoch_resumed_from_its_middle_averages_every_rank_once(tmp_path, data_dir):
    """Every rank builds the checkpoint, rank 0 writes it: the train metrics' sums saved must be all ranks', resumed on
    rank 0 only, so the resumed epoch's train_loss and train_acc equal the run's that was never interrupted."""
    out = tmp_path / "resume.pt"
    res = _run_ddp(
        [sys.executable, "tests/ddp_resume_check.py", str(out), str(DATA_DIR), str(tmp_path / "ckpts")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    got = torch.load(out, weights_only=True)
    for name in ("train_loss", "train_acc"):
        assert math.isclose(got["resumed"][name], got["whole"][name], rel_tol=1e-6), (name, got)


def test_ddp_step_equals_single_process_step_on_the_global_batch(tmp_path, data_dir):
    out = tmp_path / "ddp.pt"
    res = _run_ddp(
        [sys.executable, "tests/ddp_step_check.py", str(out), str(DATA_DIR)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    got = torch.load(out, weights_only=True)
    assert torch.equal(got["per_rank"][0], got["per_rank"][1])  # identical weights on both ranks
    assert got["samples_per_rank"].tolist() == [256, 256]  # each rank stepped on its half of the global batch
    # the same step by hand: both ranks' first batches form one global batch of 512
    torch.manual_seed(0)
    W = torch.normal(0, 0.01, size=(784, 10)).requires_grad_()
    b = torch.zeros(10, requires_grad=True)
    dm = FashionMNISTDataModule(data_dir=str(DATA_DIR))
    dm.setup("fit")
    batches = []
    for rank in range(2):  # the sampler Lightning puts in each rank's loader under DDP
        sampler = DistributedSampler(dm.train_set, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        batches.append(dm.train_set.__getitems__(list(sampler)[:256]))
    Xg, yg = torch.cat([bt[0] for bt in batches]), torch.cat([bt[1] for bt in batches])
    F.cross_entropy(Xg.reshape(-1, 784) @ W + b, yg).sum().backward()
    torch.testing.assert_close(got["W"], (W - 0.1 * W.grad / 512).detach(), rtol=0, atol=1e-7)
    torch.testing.assert_close(got["b"], (b - 0.1 * b.grad / 512).detach(), rtol=0, atol=1e-7)


def test_two_process_ddp_training_run(tmp_path, data_dir):
    res = _run_ddp(
        _train_cmd(
            tmp_path / "ddp",
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--trainer.max_epochs=3",
        )
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    written = list((tmp_path / "ddp").glob("lightning_logs/version_*/metrics.json"))
    assert len(written) == 1  # one run, written by rank 0 only
    m = json.loads(written[0].read_text())
    assert m["world_size"] == 2 and len(m["history"]) == 3
    assert m["global_step"] == 3 * 118  # ceil(30000 / 256) steps per epoch on each rank
    single = run_train(tmp_path / "single", "--trainer.max_epochs=3", "--data.batch_size=512")  # same global batch
    assert abs(m["test_acc"] - single["test_acc"]) <= 0.01


def test_three_process_evaluation_counts_every_image_once(tmp_path, data_dir):
    """10,000 images on 3 ranks: no rank pads its share with repeats, so accuracy, loss and the confusion matrix
    equal the single process's (accuracy and counts exactly)."""
    out = tmp_path / "eval.pt"
    res = _run_ddp(
        [sys.executable, "tests/ddp_eval_check.py", str(out), str(DATA_DIR), "3"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    ddp = torch.load(out, weights_only=True)
    subprocess.run(
        [sys.executable, "tests/ddp_eval_check.py", str(out), str(DATA_DIR), "1"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    single = torch.load(out, weights_only=True)
    assert int(ddp["confusion"].sum()) == 10000 and torch.equal(ddp["confusion"], single["confusion"])
    assert ddp["val_acc"] == single["val_acc"] and ddp["test_acc"] == single["test_acc"]
    assert abs(ddp["test_loss"] - single["test_loss"]) < 1e-6


def test_a_failed_checkpoint_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    from softmax_lightning import io as sl_io
    from softmax_lightning.checkpoint import AtomicCheckpointIO

    target = tmp_path / "checkpoints" / "last.ckpt"
    ckio = AtomicCheckpointIO()
    ckio.save_checkpoint({"epoch": 1, "W": torch.ones(3)}, target)
    good = target.read_bytes()

    def crash(src, dst):  # the process dies between writing the temp file and renaming it
        raise OSError("simulated crash")

    monkeypatch.setattr(sl_io.os, "replace", crash)
    with contextlib.suppress(UserError):  # one line for the user
        ckio.save_checkpoint({"epoch": 2, "W": torch.zeros(3)}, target)
    assert target.read_bytes() == good  # the last good checkpoint is intact
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no half-written temp file left behind
    assert torch.load(target, weights_only=True)["epoch"] == 1
