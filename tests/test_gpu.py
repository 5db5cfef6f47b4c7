"""Smoke tests on a GPU or Apple MPS, skipped where the machine has neither: the recipe with mixed precision, DDP on
one GPU (NCCL), exercise 4 (the data module reused after fit) and predict.py on a checkpoint trained there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softmax_lightning import exercises
from tests.conftest import DATA_DIR, ROOT, run_train

ACCELERATORS = [
    a for a, there in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())) if there
]
pytestmark = pytest.mark.skipif(not ACCELERATORS, reason="no CUDA GPU or Apple MPS on this machine")
ONE_EPOCH = ["--trainer.max_epochs=1", "--trainer.devices=1"]


@pytest.fixture(params=ACCELERATORS or ["none"])
def accelerator(request) -> str:
    return "gpu" if request.param == "cuda" else request.param


def test_the_recipe_for_one_epoch_in_16_mixed(tmp_path, data_dir, accelerator):
    m = run_train(tmp_path, *ONE_EPOCH, f"--trainer.accelerator={accelerator}", "--trainer.precision=16-mixed")
    assert m["epochs"] == 1 and m["global_step"] == 235 and m["test_acc"] > 0.75


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs a CUDA GPU")
def test_ddp_on_one_gpu_with_nccl(tmp_path, data_dir):
    m = run_train(tmp_path, *ONE_EPOCH, "--trainer.accelerator=gpu", "--trainer.strategy=ddp")
    assert m["world_size"] == 1 and m["test_acc"] > 0.75


def test_exercise_4_reuses_the_data_module_after_fitting_on_the_device(tmp_path, data_dir):
    res = exercises.exercise4(str(data_dir), tmp_path)
    assert res["argmax"]["accuracy"] > 0.8


def test_predict_uses_a_checkpoint_trained_on_the_device(tmp_path, data_dir, accelerator):
    m = run_train(tmp_path, *ONE_EPOCH, f"--trainer.accelerator={accelerator}")
    out = subprocess.run(
        [
            sys.executable,
            "scripts/predict.py",
            "--ckpt_path",
            m["checkpoint"],
            "--json",
            "--n",
            "8",
            "--data.data_dir",
            str(DATA_DIR),
            "--out",
            str(tmp_path / "p.png"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(json.loads(out.stdout)["predictions"]) == 8 and Path(tmp_path / "p.png").is_file()
