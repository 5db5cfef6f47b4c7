"""Each exercise's claim as an assertion, so a later change cannot quietly make a lesson false.

Exercises 3 and 4 use the real data: exercise 4's claims are checked on the session's chapter run (the same seed-0,
10-epoch recipe that exercise 4 trains).
"""

import json
import math
import subprocess
import sys

import pytest
import torch

from softmax_lightning import decisions as D
from softmax_lightning import exercises as ex
from softmax_lightning import functional as F
from softmax_lightning.data import FashionMNISTDataModule
from softmax_lightning.errors import UserError
from softmax_lightning.predict import load_checkpoint
from softmax_lightning.predict import main as predict_main
from tests.conftest import DATA_DIR, ROOT, one_error_line, write_fake_split


# ---------------------------------------------------------------- 1
def test_1_naive_softmax_overflows_at_100_in_float32_and_stable_does_not():
    rows = {(r["max"], r["dtype"]): r for r in ex.overflow_table()}
    r = rows[(100.0, "float32")]
    assert not all(math.isfinite(v) for v in r["naive"])
    assert all(math.isfinite(v) for v in r["stable"]) and abs(r["stable_sum"] - 1) < 1e-6
    assert all(math.isfinite(v) for v in rows[(100.0, "float64")]["naive"])  # float64 survives until ~709
    assert not math.isfinite(rows[(-110.0, "float32")]["naive_sum"])  # underflow: 0/0
    assert all(abs(r["stable_sum"] - 1) < 1e-6 for r in rows.values())


def test_1_stable_softmax_still_underflows_single_entries_to_zero():
    p = F.softmax(torch.tensor([[0.0, -200.0]]))
    assert p[0, 1] == 0 and p[0, 0] == 1


# ---------------------------------------------------------------- 2
def _rows():
    return {r["gap"]: r for r in ex.log_domain_table()}


def test_2_naive_cross_entropy_is_inf_where_log_sum_exp_is_finite_and_matches_torch():
    rows = list(_rows().values())
    broken = [r for r in rows if math.isinf(r["chapter"]["loss"])]
    assert broken and all(r["p_true"] == 0 for r in broken)
    for r in rows:
        lse = r["log-sum-exp"]
        assert math.isfinite(lse["loss"]) and abs(lse["loss"] - r["torch"]) <= 1e-5 * max(1, r["torch"])
        assert abs(lse["loss"] - r["exact"]) <= 1e-5 * r["exact"]
        torch.testing.assert_close(torch.tensor(lse["grad"]), torch.tensor([1 - r["p_true"], r["p_true"] - 1]))


def test_2_the_gradient_breaks_before_the_loss():
    rows = _rows()
    for gap in (87.0, 88.0):  # p ~ 1e-38 (normal, and just subnormal): loss and gradient are still right
        assert abs(rows[gap]["chapter"]["loss"] - gap) < 1e-4
        assert rows[gap]["chapter"]["grad"] == pytest.approx([1.0, -1.0])
    for gap in (89.0, 95.0, 100.0, 103.0):  # the loss is finite (exact at 89, 95) but the gradient is not
        assert math.isfinite(rows[gap]["chapter"]["loss"])
        assert not all(math.isfinite(g) for g in rows[gap]["chapter"]["grad"])
        assert not all(math.isfinite(g) for g in rows[gap]["stable softmax, then -log"]["grad"])  # softmax alone
    assert abs(rows[89.0]["chapter"]["loss"] - 89) < 1e-4 and abs(rows[95.0]["chapter"]["loss"] - 95) < 1e-3
    assert 0.005 < abs(rows[100.0]["chapter"]["loss"] - 100) < 0.05  # subnormal p: digits lost
    assert 0.2 < rows[103.0]["chapter"]["loss"] - 103 < 0.35
    assert math.isinf(rows[104.0]["chapter"]["loss"])


# ---------------------------------------------------------------- 3
def test_3_naive_training_hits_the_guard_and_stable_does_not(data_dir):
    out = ex.naive_vs_stable_run(str(data_dir), epochs=1)
    assert out["naive"]["status"] == "stopped"
    assert "epoch 0, step" in out["naive"]["message"] and "--model.softmax stable" in out["naive"]["message"]
    assert out["stable"]["status"] == "finished" and math.isfinite(out["stable"]["train_loss"])


# ---------------------------------------------------------------- 4: the decision rules, pure
def _random_probs(n=2000, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.softmax(torch.randn(n, k, generator=g) * 2)


def test_4_bayes_rule_with_zero_one_costs_is_the_argmax():
    probs = _random_probs()
    assert torch.equal(D.bayes_decisions(probs, D.zero_one_cost(10)), probs.argmax(1))
    assert torch.equal(D.decide(probs), probs.argmax(1))


def test_4_chow_rule_is_the_bayes_rule_with_an_abstain_action_under_zero_one_costs():
    probs = _random_probs()
    for c in (0.0, 0.05, 0.2, 0.5, 0.8, 1.0):
        chow = D.chow_decisions(probs, D.chow_threshold(c))
        assert torch.equal(chow, D.abstain_decisions(probs, D.zero_one_cost(10), c)), c
        assert torch.equal(chow, D.decide(probs, abstain_cost=c))
    assert (D.chow_decisions(probs, 0.5) == D.ABSTAIN).any() and not (D.chow_decisions(probs, 0.0) < 0).any()


def test_4_abstaining_by_expected_cost_under_a_cost_matrix():
    probs, C = _random_probs(), ex.cost_matrix()
    risk = D.expected_costs(probs, C)
    for c in (0.2, 0.5, 1.0):
        pred = D.abstain_decisions(probs, C, c)
        abstained = pred == D.ABSTAIN
        assert torch.equal(abstained, risk.min(1).values > c)
        assert torch.equal(pred[~abstained], D.bayes_decisions(probs, C)[~abstained])
    assert torch.equal(D.abstain_decisions(probs, C, 1e9), D.bayes_decisions(probs, C))


def test_4_prior_correction_is_bayes_rule_with_the_new_prior():
    g = torch.Generator().manual_seed(1)
    likelihood = torch.rand(50, 10, generator=g)  # p(x|k) for 50 inputs
    train, deploy = torch.rand(10, generator=g) + 0.1, torch.rand(10, generator=g) + 0.1
    posterior = lambda prior: (likelihood * prior) / (likelihood * prior).sum(1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(D.shift_prior(posterior(train), deploy, train), posterior(deploy))
    probs = _random_probs()
    torch.testing.assert_close(D.shift_prior(probs, torch.full((10,), 3.0)), probs)  # uniform -> uniform: no change
    shirts = torch.ones(10)
    shirts[ex.SHIRT] = 3
    shifted = D.shift_prior(probs, shirts)
    assert (shifted[:, ex.SHIRT] >= probs[:, ex.SHIRT] - 1e-7).all()
    torch.testing.assert_close(shifted.sum(1), torch.ones(len(probs)))


def test_4_the_cost_matrix_tells_one_story():
    C = ex.cost_matrix()
    assert (C.diagonal() == 0).all()
    others = [k for k in range(10) if k != ex.SHIRT]
    assert (C[ex.SHIRT, others] == ex.SHIRT_MISS).all()  # a missed Shirt costs the same whatever it is called
    off = ~torch.eye(10, dtype=torch.bool)
    off[ex.SHIRT] = False
    assert (C[off] == 1).all()  # every other mistake costs 1


@pytest.mark.parametrize(
    "bad, text", [("1 2 3", "10 rows of 10"), ("nan", "non-finite"), ("inf", "non-finite"), ("-1", "negative cost")]
)
def test_4_bad_cost_matrices_are_refused(tmp_path, bad, text):
    rows = [["0" if i == j else "1" for j in range(10)] for i in range(10)]
    if bad == "1 2 3":
        content = bad
    else:
        rows[2][5] = bad
        content = "\n".join(" ".join(r) for r in rows)
    (tmp_path / "c.txt").write_text(content)
    with pytest.raises(UserError, match=text):
        D.load_cost_matrix(tmp_path / "c.txt")


@pytest.mark.parametrize(
    "bad",
    [
        "1,2,3",
        "1,1,1,1,1,1,0,1,1,1",
        "1,1,1,1,1,1,-3,1,1,1",
        "nan,1,1,1,1,1,1,1,1,1",
        "inf,1,1,1,1,1,1,1,1,1",
        "a,b",
        "",
    ],
)
def test_4_bad_priors_are_refused(bad):
    with pytest.raises(UserError, match="10 positive numbers"):
        D.parse_prior(bad)


def test_4_good_prior_is_normalised():
    prior = D.parse_prior("1, 1 1,1,1,1,3,1,1,1")
    assert prior.sum() == pytest.approx(1) and prior[ex.SHIRT] == pytest.approx(0.25)


# ---------------------------------------------------------------- 4: the claims on the real model
@pytest.fixture(scope="module")
def chapter_probs(chapter_run):
    model, _ = load_checkpoint(chapter_run["checkpoint"])
    dm = FashionMNISTDataModule(data_dir=str(DATA_DIR))
    dm.setup("test")
    with torch.no_grad():
        return model(dm.test_set.X), dm.test_set.y


@pytest.fixture(scope="module")
def analysis(chapter_probs):
    return ex.decision_analysis(*chapter_probs, ex.cost_matrix())


def test_4_bayes_decisions_cost_less_and_trade_accuracy(analysis):
    a, b = analysis["argmax"], analysis["bayes"]
    assert b["expected_cost"] <= a["expected_cost"] + 1e-9  # by construction
    assert b["cost"] < 0.75 * a["cost"]  # on the true labels
    assert b["shirts_missed"] < 0.4 * a["shirts_missed"] and b["false_alarms"] > 2 * a["false_alarms"]
    assert 0.05 < a["accuracy"] - b["accuracy"] < 0.15  # not "a little": several points
    assert analysis["changed"] == analysis["changed_to_shirt"] > 1000


def test_4_p_shirt_is_overconfident_where_the_rule_changes_decisions(chapter_probs, analysis):
    probs, y = chapter_probs
    mid = [r for r in analysis["shirt_reliability"] if 0.2 <= r["lo"] < 0.5]
    assert len(mid) == 3 and all(r["mean_p"] > r["frequency"] for r in mid)
    p = probs[:, ex.SHIRT]
    band = (p > 0.2) & (p <= 0.5)
    assert float(p[band].mean() - (y[band] == ex.SHIRT).float().mean()) > 0.02  # pooled: ~5 points, se ~1.4
    assert sum(r["changed"] for r in mid) > 0.25 * analysis["changed"]
    assert analysis["ece"] < 0.05  # ... while the top label looks well calibrated


def test_4_chow_table_equals_abstaining_and_buys_accuracy(analysis):
    chow = analysis["chow"]
    assert all(r["differ"] == 0 for r in chow)
    cov = [r["coverage"] for r in chow]
    acc = [r["accuracy"] for r in chow]
    assert cov[0] == 1 and all(x >= y for x, y in zip(cov, cov[1:])) and cov[-1] < 0.5
    assert all(x <= y for x, y in zip(acc, acc[1:])) and acc[-1] > 0.98
    taus = [t for t, _, _ in analysis["reject_curve"]]
    assert len(taus) == len(set(taus)) and taus[-1] == 0.99


def test_4_abstaining_under_costs_and_the_prior_correction(analysis):
    ab = analysis["abstain"]
    assert ab[0]["coverage"] == 1 and ab[-1]["coverage"] < 0.6 and ab[-1]["cost"] < ab[0]["cost"] / 2
    pr = analysis["prior"]
    assert pr["corrected"]["accuracy"] > pr["as_trained"]["accuracy"] + 0.005
    assert pr["corrected"]["shirts_missed"] < 0.7 * pr["as_trained"]["shirts_missed"]


def test_4_figure(analysis, tmp_path):
    ex.plot_decisions(analysis, tmp_path / "risk_coverage.png")
    assert (tmp_path / "risk_coverage.png").stat().st_size > 5000


def test_4_ece_by_hand_matches_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = _random_probs(500)
    y = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    ours, _ = ex.expected_calibration_error(probs, y, bins=15)
    ref = multiclass_calibration_error(probs, y, num_classes=10, n_bins=15, norm="l1")
    assert abs(ours - float(ref)) < 1e-5


# ---------------------------------------------------------------- 4: scripts/predict.py's decision options
def _cost_file(tmp_path, C=None):
    cost = tmp_path / "cost.txt"
    C = ex.cost_matrix() if C is None else C
    cost.write_text("\n".join(" ".join(str(float(v)) for v in row) for row in C.tolist()))
    return str(cost)


def test_4_predict_applies_one_rule_per_option(chapter_run, tmp_path, capsys):
    args = ["--ckpt", chapter_run["checkpoint"], "--n", "300", "--json", "--out", str(tmp_path / "p.png")]

    def run(*extra):
        assert predict_main([*args, *extra]) == 0
        return json.loads(capsys.readouterr().out)["predictions"]

    shirts = lambda recs: sum(r["predicted"] == "Shirt" for r in recs)  # noqa: E731
    abstained = lambda recs: sum(r["predicted"] == "(abstain)" for r in recs)  # noqa: E731
    plain, bayes = run(), run("--cost-matrix", _cost_file(tmp_path))
    assert shirts(bayes) > shirts(plain) and abstained(bayes) == 0
    chow = run("--reject-below", "0.9")
    assert run("--abstain-cost", "0.1") == chow  # Chow's rule, by its threshold or by the cost of abstaining
    assert 0 < abstained(chow) < len(chow)
    assert all(r["predicted"] == "(abstain)" or r["probability"] >= 0.9 for r in chow)
    both = run("--cost-matrix", _cost_file(tmp_path), "--abstain-cost", "0.3")
    assert 0 < abstained(both) and all(r["predicted"] in ("(abstain)", b["predicted"]) for r, b in zip(both, bayes))
    prior = run("--prior", "1,1,1,1,1,1,3,1,1,1")
    assert shirts(prior) > shirts(plain)
    p_shirt = lambda r: next((t["probability"] for t in r["top3"] if t["class"] == "Shirt"), 0.0)  # noqa: E731
    assert sum(p_shirt(r) for r in prior) > sum(p_shirt(r) for r in plain)  # printed probabilities are corrected


@pytest.mark.parametrize(
    "extra, text",
    [
        (["--abstain-cost", "-0.1"], "--abstain-cost must be a finite number >= 0"),
        (["--abstain-cost", "nan"], "--abstain-cost must be a finite number >= 0"),
        (["--abstain-cost", "inf"], "--abstain-cost must be a finite number >= 0"),
        (["--reject-below", "1.5"], "--reject-below must be in [0, 1]"),
        (["--reject-below", "0.9", "--abstain-cost", "0.1"], "pass only one of them"),
        (["--reject-below", "0.9", "--cost-matrix", "COST"], "with --cost-matrix use --abstain-cost"),
        (["--prior", "1,2,3"], "--prior needs 10 positive numbers"),
        (["--prior", "1,1,1,1,1,1,0,1,1,1"], "--prior needs 10 positive numbers"),
        (["--cost-matrix", "NEG"], "negative cost"),
    ],
)
def test_4_predict_checks_decision_options_before_loading_anything(tmp_path, capsys, extra, text):
    neg = ex.cost_matrix()
    neg[0, 1] = -1
    files = {"COST": _cost_file(tmp_path), "NEG": None}
    if "NEG" in extra:
        (tmp_path / "neg").mkdir()
        files["NEG"] = _cost_file(tmp_path / "neg", neg)
    extra = [files.get(a, a) for a in extra]
    # the checkpoint does not exist: the option's error comes first, so options are checked before any loading
    assert predict_main(["--ckpt", str(tmp_path / "missing.ckpt"), *extra]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    one_error_line(err, text)


def test_4_predict_decision_options_as_a_process(chapter_run, tmp_path, capsys):
    cmd = [
        sys.executable,
        "scripts/predict.py",
        "--ckpt",
        chapter_run["checkpoint"],
        "--n",
        "50",
        "--json",
        "--out",
        str(tmp_path / "p.png"),
        "--cost-matrix",
        _cost_file(tmp_path),
        "--abstain-cost",
        "0.5",
        "--prior",
        "1,1,1,1,1,1,3,1,1,1",
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["predictions"]) == 50
    from softmax_lightning.predict import main as predict_main  # the table says why confident images were not answered

    assert predict_main([*cmd[2:6], *cmd[7:13]]) == 0  # the same, with neither --json nor --prior
    table = capsys.readouterr().out
    assert "(abstain)" in table and "(abstain): every class's expected cost (--cost-matrix) is above" in table
    bad = subprocess.run([*cmd[:-2], "--prior", "3"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert bad.returncode == 2 and bad.stdout == ""
    one_error_line(bad.stderr, "--prior")


# ---------------------------------------------------------------- 5
@pytest.fixture
def one_thread():
    """Many small ops on small tensors: one thread, restored afterwards. On a busy shared machine two threads wait on
    each other at every op, which made the training test below take minutes instead of seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_5_sampled_softmax_is_faster_than_full_at_1e5_classes_and_memory_is_linear_in_k():
    full = ex.time_steps(100_000, reps=2)
    sampled = ex.time_steps(100_000, n_sampled=1024, reps=2, layout=ex.row_layout)
    assert sampled["seconds"] < full["seconds"] / 3
    small = ex.time_steps(1_000, reps=2)
    assert full["seconds"] > 10 * small["seconds"]  # cost grows with the number of classes
    assert full["param_mb"] == pytest.approx(100 * small["param_mb"])
    assert sampled["param_mb"] == full["param_mb"]  # sampled softmax does not shrink the parameters


def test_5_steps_match_the_math():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(8, 5, generator=g), torch.randint(0, 7, (8,), generator=g)
    for layout in (ex.chapter_layout, ex.row_layout):  # the same (K, d) weights, two memory layouts
        W, b = layout(5, 7), torch.zeros(7)
        ex.full_step(X, y, W, b, lr=0.5)
        grad = F.cross_entropy_grad(torch.zeros(8, 7), y)  # at W = 0: softmax - onehot, (8, 7)
        torch.testing.assert_close(W, -0.5 * grad.T @ X / 8)
        torch.testing.assert_close(b, -0.5 * grad.sum(0) / 8)
    # with every class drawn as a negative and a uniform proposal, sampled softmax is the full softmax
    W1, b1, W2, b2 = ex.row_layout(5, 7), torch.zeros(7), ex.row_layout(5, 7), torch.zeros(7)
    ex.full_step(X, y, W1, b1, lr=0.5)
    ex.sampled_step(X, y, W2, b2, torch.arange(7), lr=0.5)
    torch.testing.assert_close(W1, W2)


def test_5_uniform_correction_cancels():
    g = torch.Generator().manual_seed(0)
    z_true, z_neg = torch.randn(16, generator=g), torch.randn(16, 50, generator=g)
    y, neg = torch.randint(0, 500, (16,), generator=g), torch.randint(0, 500, (50,), generator=g)
    log_q = torch.log(50 * torch.full((500,), 1 / 500))
    target = torch.zeros(16, dtype=torch.long)
    torch.testing.assert_close(
        F.cross_entropy(ex.sampled_logits(z_true, z_neg, y, neg, log_q), target),
        F.cross_entropy(ex.sampled_logits(z_true, z_neg, y, neg), target),
    )


def test_5_log_q_correction_recovers_the_full_gradient_in_expectation(one_thread):
    K = 1000
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(16, K, generator=g) * 2, torch.randint(0, K, (16,), generator=g)
    Q = ex.zipf_prior(K)
    err = {c: ex.sampled_gradient_error(z, y, Q, 512, corrected=c, draws=100) for c in (False, True)}
    assert err[True] < 0.4 * err[False] and err[False] > 0.8  # measured ~0.25 vs ~1.1


def test_5_log_q_beats_uncorrected_on_zipf_and_full_wins_trained_out(one_thread):
    zipf = ex.train_compare(
        1000, zipf=True, methods=("sampled, unigram, uncorrected", "sampled, unigram, log-Q"), epochs=20, eval_at=(20,)
    )
    unc, cor = (zipf[m]["history"][20] for m in ("sampled, unigram, uncorrected", "sampled, unigram, log-Q"))
    assert cor["ppl"] < 0.9 * unc["ppl"] and cor["acc"] > unc["acc"] + 0.005  # measured 6.5 vs 7.9, 0.624 vs 0.604
    balanced = ex.train_compare(1000, epochs=20, eval_at=(20,))
    full, sampled = (balanced[m]["history"][20] for m in ("full softmax", "sampled, uniform"))
    assert full["acc"] > sampled["acc"] + 0.02 and full["ppl"] < sampled["ppl"]  # measured 0.452 vs 0.413


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    "case", ["unknown exercise", "data_dir is a file", "corrupt data", "out_dir is a file", "out_dir under a file"]
)
def test_exercise_options_are_checked_before_anything_runs(tmp_path, capsys, case):
    afile = tmp_path / "a_file"
    afile.write_text("mine")
    fake = tmp_path / "fake"
    raw = write_fake_split(fake / "FashionMNIST" / "raw")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")  # truncated header
    args, text = {
        "unknown exercise": (["1", "7"], "unknown exercise '7'"),
        "data_dir is a file": (["1", "3", "--data.data_dir", str(afile)], "not a folder"),
        "corrupt data": (["1", "4", "--data.data_dir", str(fake), "--out_dir", str(tmp_path / "o")], "truncated"),
        "out_dir is a file": (["1", "4", "--data.data_dir", str(DATA_DIR), "--out_dir", str(afile)], "--out_dir"),
        "out_dir under a file": (
            ["1", "4", "--data.data_dir", str(DATA_DIR), "--out_dir", str(afile / "x")],
            "not a writable folder",
        ),
    }[case]
    assert ex.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""  # not even exercise 1 ran
    one_error_line(err, text)
    assert afile.read_text() == "mine"


def test_exercises_1_and_2_run_from_the_command_line():
    res = subprocess.run(
        [sys.executable, "-m", "softmax_lightning.exercises", "1", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "Exercise 1" in res.stdout and "[inf, nan]" in res.stdout


# ---------------------------------------------------------------- docs/tuned.md: curvature and step size
def test_curvature_init_hessian_is_second_moment_over_k():
    from softmax_lightning import curvature

    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(40, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)

    def mean_loss(theta):  # theta = (W (4, 3), b (3,)) flattened as rows of [W; b]: x gets a trailing 1
        Wb = theta.reshape(5, 3)
        return F.cross_entropy(X @ Wb[:4] + Wb[4], y).mean()

    H = torch.autograd.functional.hessian(mean_loss, torch.zeros(15, dtype=torch.float64))
    top_h = float(torch.linalg.eigvalsh(H)[-1])
    top_m, _ = curvature.top_eigen(curvature.second_moment(X, bias=True))
    assert top_h == pytest.approx(curvature.init_hessian_top(top_m, classes=3), rel=1e-9)


def test_curvature_of_real_inputs_and_stability_limits(data_dir):
    from softmax_lightning import curvature

    res = curvature.input_curvature(str(data_dir))
    raw, std = res["raw"], res["standardized"]
    assert 100 < raw["top"] < 120 and 280 < std["top"] < 320  # docs/tuned.md: 110.2 and 300.5
    assert raw["cos_top_mean"] > 0.99 and std["pixel_means"][0] < -0.5  # one global mean does not centre pixels
    assert raw["ranked"][1] / raw["ranked"][100] > 2 * std["ranked"][1] / std["ranked"][100]  # better conditioned
    h_raw, h_std = (curvature.init_hessian_top(r["top_with_bias"]) for r in (raw, std))
    assert 2 / h_raw > 0.1 > 2 / h_std  # the chapter's lr 0.1 is inside plain SGD's limit only for raw inputs
    assert curvature.max_stable_step(0.9, nesterov=True) / h_std > 0.01  # the tuned lr 0.01 is stable
    assert curvature.max_stable_step(0.9) == pytest.approx(3.8, abs=1e-6)
    assert curvature.max_stable_step(0.9, nesterov=True) == pytest.approx(3.8 / 2.8, abs=1e-6)
