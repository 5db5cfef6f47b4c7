"""Each exercise's claim as an assertion (exercises 3 and 4 train on the real data)."""

import json
import math

import lightning as L
import torch

from softmax_lightning import exercises as ex
from softmax_lightning import functional as F
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.model import SoftmaxRegression
from softmax_lightning.predict import bayes_decisions, decide, main as predict_main


def test_1_naive_softmax_overflows_at_100_in_float32_and_stable_does_not():
    rows = {(r["max"], r["dtype"]): r for r in ex.overflow_table()}
    r = rows[(100.0, "float32")]
    assert not all(math.isfinite(v) for v in r["naive"])
    assert all(math.isfinite(v) for v in r["stable"]) and abs(r["stable_sum"] - 1) < 1e-6
    assert all(math.isfinite(v) for v in rows[(100.0, "float64")]["naive"])  # float64 survives until ~709
    assert not math.isfinite(rows[(-110.0, "float32")]["naive_sum"])  # underflow: 0/0
    assert all(abs(r["stable_sum"] - 1) < 1e-6 for r in rows.values())


def test_2_naive_cross_entropy_is_inf_where_log_sum_exp_is_finite_and_matches_torch():
    rows = ex.log_domain_table()
    broken = [r for r in rows if math.isinf(r["naive"])]
    assert broken and all(r["p_true"] == 0 for r in broken)
    for r in rows:
        assert math.isfinite(r["stable"]) and abs(r["stable"] - r["torch"]) <= 1e-5 * max(1, r["torch"])


def test_3_naive_training_hits_the_guard_and_stable_does_not(data_dir):
    out = ex.naive_vs_stable_run(str(data_dir), epochs=1)
    assert out["naive"]["status"] == "stopped"
    assert "epoch 0, step" in out["naive"]["message"] and "--model.softmax stable" in out["naive"]["message"]
    assert out["stable"]["status"] == "finished" and math.isfinite(out["stable"]["train_loss"])


def _trained_probs(data_dir, epochs=3):
    L.seed_everything(0, verbose=False)
    model, dm = SoftmaxRegression(), FashionMNISTDataModule(data_dir=str(data_dir))
    L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(model, datamodule=dm)
    X, y = dm.test_set.X, dm.test_set.y
    with torch.no_grad():
        return model(X), y


def test_4_bayes_decisions_cost_less_and_coverage_falls(data_dir, tmp_path):
    probs, y = _trained_probs(data_dir)
    C = ex.cost_matrix()
    res = ex.decision_analysis(probs, y, C)
    assert res["bayes"]["expected_cost"] <= res["argmax"]["expected_cost"] + 1e-9  # by construction
    assert res["bayes"]["realized_cost"] < res["argmax"]["realized_cost"]  # on the true labels, this matrix
    assert res["bayes"]["shirts_missed"] < res["argmax"]["shirts_missed"]
    coverage = [c for _, c, _ in res["reject_curve"]]
    assert all(a >= b for a, b in zip(coverage, coverage[1:])) and coverage[0] == 1.0 and coverage[-1] < 0.5
    assert 0 <= res["ece"] < 0.1
    # equal costs: Bayes decisions are the argmax
    assert torch.equal(bayes_decisions(probs, 1 - torch.eye(10)), probs.argmax(1))
    ex.plot_decisions(res, tmp_path / "risk_coverage.png")
    assert (tmp_path / "risk_coverage.png").stat().st_size > 5000


def test_4_ece_by_hand_matches_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(500, 10, generator=g) * 2)
    y = torch.randint(0, 10, (500,), generator=g)
    ours, _ = ex.expected_calibration_error(probs, y, bins=15)
    ref = multiclass_calibration_error(probs, y, num_classes=10, n_bins=15, norm="l1")
    assert abs(ours - float(ref)) < 1e-5


def test_4_predict_cli_takes_a_cost_matrix_and_a_reject_threshold(chapter_run, tmp_path, capsys):
    cost = tmp_path / "cost.txt"
    cost.write_text("\n".join(" ".join(str(float(v)) for v in row) for row in ex.cost_matrix().tolist()))
    args = ["--ckpt", chapter_run["checkpoint"], "--n", "200", "--json", "--out", str(tmp_path / "p.png")]
    assert predict_main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert predict_main([*args, "--cost-matrix", str(cost)]) == 0
    bayes = json.loads(capsys.readouterr().out)
    assert sum(r["predicted"] == "Shirt" for r in bayes) > sum(r["predicted"] == "Shirt" for r in plain)
    assert predict_main([*args, "--reject-below", "0.9"]) == 0
    rejected = json.loads(capsys.readouterr().out)
    assert any(r["predicted"] == "(abstain)" for r in rejected)
    assert all(r["predicted"] == "(abstain)" or r["probability"] >= 0.9 for r in rejected)
    cost.write_text("1 2 3")
    assert predict_main([*args, "--cost-matrix", str(cost)]) == 2
    assert "needs 10 rows of 10" in capsys.readouterr().err
    assert torch.equal(decide(torch.tensor([[0.5, 0.5]]), None, 0.6), torch.tensor([-1]))


def test_5_sampled_softmax_is_faster_than_full_at_1e5_classes():
    full = ex.time_steps(100_000, reps=2)
    sampled = ex.time_steps(100_000, n_sampled=1024, reps=2)
    assert sampled["seconds"] < full["seconds"] / 3
    small = ex.time_steps(1_000, reps=2)
    assert full["seconds"] > 10 * small["seconds"]  # cost grows with the number of classes


def test_5_sampled_softmax_learns_about_as_well_as_full_softmax():
    res = ex.train_compare(2_000, epochs=3)
    chance = 1 / 2_000
    assert res["full"]["test_acc"] > 100 * chance and res["sampled"]["test_acc"] > 100 * chance
    assert abs(res["sampled"]["test_acc"] - res["full"]["test_acc"]) < 0.1
