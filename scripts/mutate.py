"""Mutation testing: break the code on purpose, one careless edit at a time, and check that a test fails.

    python scripts/mutate.py                        # every mutant, each against the tests chosen to catch it
    python scripts/mutate.py --list                 # the mutants: name, file, the behaviour each one breaks
    python scripts/mutate.py --only accuracy-argmin # one mutant (repeat --only for more)
    python scripts/mutate.py --full                 # every mutant against the whole suite (hours)
    python scripts/mutate.py --fail-under 90        # exit 1 when fewer than 90% of the mutants are killed

For each mutant: the repository's files (``git ls-files``: tracked, and new files git does not ignore) are copied
into a temporary folder, with ``data`` linked to this checkout's; the mutation replaces one exact text, which must
occur exactly once in its file; then ``pytest -x -q -p no:cacheprovider`` runs there on the mutant's tests, with
``PYTHONPATH`` set to the copy, so that the mutated package is the one imported.

A mutant is
  * killed: pytest exited with 1 (a test failed, or a fixture it needs failed); or the tests could not even be
    imported (a collection error, or a ``conftest.py`` that fails to import) and the traceback runs through the
    mutated file;
  * survived: pytest exited with 0, every chosen test passed with the mutation in place;
  * error: anything else (a collection error from another file, no tests collected, a pytest crash) or the tests
    ran past ``--timeout``: the run says nothing about the mutant, and it counts as not killed.
Then every test that killed a mutant runs once more on an unmutated copy (``--no-control`` skips this): a test that
fails there too proves nothing, and its mutants count as errors.

The score is killed / total. The table goes to stdout and the report to ``mutation-report.json`` (after every
mutant, so an interrupted run keeps what it measured). Exit code 0, or 1 under ``--fail-under`` when the score is
lower; bad options end in one ``error:`` line and exit code 2 before anything runs. Mutants run one after another.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = "mutation-report.json"


@dataclass(frozen=True)
class Mutation:
    """One careless edit: in ``file``, the text ``original`` (exactly once there) becomes ``mutated``."""

    name: str
    file: str
    original: str
    mutated: str
    breaks: str  # the behaviour it breaks, in one line
    tests: tuple[str, ...]  # pytest node ids or paths, the likeliest killer first


# ------------------------------------------------------------------------------------------------ the tests used
FUNC = "tests/test_functional.py"
OPTIM = "tests/test_optim.py"
DATA = "tests/test_data.py"
MODEL = "tests/test_model.py"
PATHS = "tests/test_lightning_paths.py"
SAFETY = "tests/test_run_safety.py"
HOSTILE = "tests/test_hostile_inputs.py"
RESUME_ANY = f"{PATHS}::test_a_resume_from_any_checkpoint_lightning_saves_ends_like_the_uninterrupted_run"
RESUME_AT = {
    case: f"{RESUME_ANY}[{case}-args{i}-epoch=1-step={step}.ckpt]"
    for i, (case, step) in enumerate(
        [
            ("sparse validation", 40),
            ("validation twice an epoch", 30),
            ("every n train steps", 30),
            ("no validation", 40),
        ]
    )
}
ODD_BATCH = f"{PATHS}::test_the_last_odd_sized_minibatch_takes_the_chapters_step"
COSINE = f"{PATHS}::test_the_cosine_schedule_is_half_the_lr_at_its_midpoint_and_zero_at_its_end"
HAND_SGD = f"{OPTIM}::test_momentum_nesterov_weight_decay_match_hand_computation"
CHANGED = f"{SAFETY}::test_changed_settings_are_refused_and_nothing_is_touched"
OWN_SETTINGS = f"{SAFETY}::test_resuming_takes_the_runs_own_settings_unless_typed"
EVALUATE = "tests/test_train.py::test_evaluating_a_run_reproduces_its_numbers_in_its_own_folder"
STATS = "tests/test_tuned.py::test_standardisation_statistics_come_from_the_training_split_only"
SOFTMAX_OPTION = f"{MODEL}::test_the_softmax_option_chooses_the_stable_path_or_the_chapters_cells"
GUARD = f"{MODEL}::test_the_guard_stops_a_finite_loss_whose_gradient_is_not_finite"
LOADER = f"{DATA}::test_a_resumed_loader_skips_what_was_trained_and_keeps_counting"
SHARDS = f"{DATA}::test_evaluation_shards_cover_every_image_once_in_order"
PREDICT_STATS = "tests/test_train.py::test_predict_py_standardises_its_inputs_as_the_run_did"
OUTSIDE_RUN = "tests/test_train.py::test_a_checkpoint_outside_its_run_folder_brings_its_own_settings"
DAMAGED_IDX = "tests/test_bad_input.py::test_damaged_idx_files"

M = Mutation
MUTATIONS: list[Mutation] = [
    # ---------------------------------------------------------------------------- the math (functional.py)
    M(
        "accuracy-argmin",
        "softmax_lightning/functional.py",
        "preds = y_hat.argmax(dim=1)",
        "preds = y_hat.argmin(dim=1)",
        "accuracy counts argmin hits instead of argmax hits",
        (f"{FUNC}::test_accuracy_counts_the_argmax_hits_on_random_logits", f"{FUNC}::test_chapter_cells"),
    ),
    M(
        "softmax-no-max-shift",
        "softmax_lightning/functional.py",
        "X_exp = torch.exp(X - X.amax(1, keepdim=True))",
        "X_exp = torch.exp(X)",
        "the stable softmax forgets to subtract the row max (overflows like the naive one)",
        (
            f"{FUNC}::test_stable_softmax_survives_where_naive_overflows",
            f"{FUNC}::test_softmax_matches_torch_forward_and_grad",
        ),
    ),
    M(
        "naive-softmax-sums-columns",
        "softmax_lightning/functional.py",
        "partition = X_exp.sum(1, keepdim=True)",
        "partition = X_exp.sum(0, keepdim=True)",
        "the chapter's softmax normalises over the batch (axis 0) instead of over the classes",
        (f"{FUNC}::test_naive_versions_agree_where_finite", f"{FUNC}::test_chapter_cells"),
    ),
    M(
        "log-softmax-no-max-shift",
        "softmax_lightning/functional.py",
        "shifted = X - X.amax(1, keepdim=True).detach()",
        "shifted = X",
        "log-sum-exp without the max shift: the stable cross-entropy overflows on large logits",
        (
            f"{FUNC}::test_cross_entropy_matches_torch_forward_and_grad",
            f"{FUNC}::test_stable_softmax_survives_where_naive_overflows",
        ),
    ),
    M(
        "cross-entropy-predicted-class",
        "softmax_lightning/functional.py",
        "-log_softmax(logits).gather(1, y.unsqueeze(1)).squeeze(1)",
        "-log_softmax(logits).gather(1, logits.argmax(1, keepdim=True)).squeeze(1)",
        "the stable cross-entropy scores the predicted class instead of the true class",
        (f"{FUNC}::test_cross_entropy_matches_torch_forward_and_grad", f"{FUNC}::test_chapter_cells"),
    ),
    M(
        "naive-cross-entropy-max-probability",
        "softmax_lightning/functional.py",
        "-torch.log(y_hat[torch.arange(len(y_hat), device=y_hat.device), y])",
        "-torch.log(y_hat.amax(1))",
        "the chapter's cross-entropy takes the largest probability instead of the true class's",
        (f"{FUNC}::test_chapter_cells", f"{FUNC}::test_naive_versions_agree_where_finite"),
    ),
    M(
        "backward-plus-onehot",
        "softmax_lightning/functional.py",
        "-torch.ones_like(grad[:, :1])",
        "torch.ones_like(grad[:, :1])",
        "the hand-written backward is softmax + onehot instead of softmax - onehot",
        (f"{FUNC}::test_hand_written_backward_is_softmax_minus_onehot_and_passes_gradcheck",),
    ),
    M(
        "evidence-reshaped-weights",
        "softmax_lightning/functional.py",
        "E = x[:, None, :] * W.T[None]",
        "E = x[:, None, :] * W.reshape(classes, pixels)[None]",
        "evidence maps pair pixels with the wrong weights (W reshaped, not transposed): they no longer sum to the "
        "logits",
        (
            "softmax_lightning/functional.py::softmax_lightning.functional.evidence",
            "tests/test_explain.py::test_evidence_maps_sum_to_the_models_logits_on_real_test_images",
        ),
    ),
    M(
        "confused-pairs-one-direction",
        "softmax_lightning/confusions.py",
        "both = m + m.T",
        "both = m",
        "the most-confused pairs count mistakes in one direction only",
        (
            "tests/test_explain.py::test_most_confused_pairs_counts_both_directions",
            "softmax_lightning/confusions.py::softmax_lightning.confusions.most_confused_pairs",
        ),
    ),
    M(
        "ece-unweighted-bins",
        "softmax_lightning/exercises.py",
        "ece += n / len(y) * abs(a - c)",
        "ece += abs(a - c) / bins",
        "the calibration error averages the bins without weighting them by their number of images",
        ("tests/test_exercises.py::test_4_ece_by_hand_matches_torchmetrics",),
    ),
    M(
        "bayes-rule-most-costly",
        "softmax_lightning/decisions.py",
        "return expected_costs(probs, cost).argmin(1)",
        "return expected_costs(probs, cost).argmax(1)",
        "the Bayes rule picks the class of largest expected cost instead of the least",
        ("tests/test_exercises.py::test_4_bayes_rule_with_zero_one_costs_is_the_argmax",),
    ),
    M(
        "prior-shift-not-renormalised",
        "softmax_lightning/decisions.py",
        "return shifted / shifted.sum(1, keepdim=True)",
        "return shifted",
        "the prior correction forgets to renormalise: the shifted probabilities no longer sum to 1",
        (
            "tests/test_exercises.py::test_4_prior_correction_is_bayes_rule_with_the_new_prior",
            "softmax_lightning/decisions.py::softmax_lightning.decisions.shift_prior",
        ),
    ),
    # ---------------------------------------------------------------------------- the SGD (optim.py)
    M(
        "sgd-divides-by-256",
        "softmax_lightning/optim.py",
        "p.sub_(p.grad * (lr / batch_size))",
        "p.sub_(p.grad * (lr / 256))",
        "the chapter's SGD step divides by a fixed 256, not by the minibatch's size (the last one holds 96)",
        (ODD_BATCH, f"{OPTIM}::test_one_step_is_the_chapters_update_on_a_real_shaped_batch"),
    ),
    M(
        "sgd-mean-gradient-by-256",
        "softmax_lightning/optim.py",
        "g = p.grad / batch_size  # the mean gradient",
        "g = p.grad / 256  # the mean gradient",
        "with momentum or weight decay, the gradient is divided by a fixed 256, not by the minibatch's size",
        (HAND_SGD,),
    ),
    M(
        "sgd-keeps-gradients",
        "softmax_lightning/optim.py",
        "                    p.grad.zero_()  # ... and param.grad.zero_()\n",
        "",
        "the chapter's SGD step leaves the gradients in place (the chapter's param.grad.zero_() dropped)",
        (f"{OPTIM}::test_one_step_is_the_chapters_update_on_a_real_shaped_batch",),
    ),
    M(
        "momentum-no-decay",
        "softmax_lightning/optim.py",
        "buf.mul_(mu).add_(g)",
        "buf.add_(g)",
        "the momentum buffer sums every gradient without decaying the old ones by mu",
        (HAND_SGD,),
    ),
    M(
        "momentum-dampened",
        "softmax_lightning/optim.py",
        "buf.mul_(mu).add_(g)",
        "buf.mul_(mu).add_(g, alpha=1 - mu)",
        "the momentum buffer damps the new gradient by (1 - mu)",
        (HAND_SGD,),
    ),
    M(
        "momentum-buffer-starts-at-zero",
        "softmax_lightning/optim.py",
        'buf = self.state[p]["momentum_buffer"] = g.clone()',
        'buf = self.state[p]["momentum_buffer"] = torch.zeros_like(g)',
        "the momentum buffer starts from zero, so the first step moves nothing",
        (HAND_SGD,),
    ),
    M(
        "nesterov-swapped",
        "softmax_lightning/optim.py",
        'g = g + mu * buf if group["nesterov"] else buf',
        'g = buf + mu * g if group["nesterov"] else buf',
        "Nesterov's look-ahead is buf + mu * g instead of g + mu * buf",
        (HAND_SGD,),
    ),
    M(
        "nesterov-ignored",
        "softmax_lightning/optim.py",
        'g = g + mu * buf if group["nesterov"] else buf',
        "g = buf",
        "nesterov=True takes the plain heavy-ball step",
        (HAND_SGD,),
    ),
    M(
        "weight-decay-sign",
        "softmax_lightning/optim.py",
        "g = g + wd * p",
        "g = g - wd * p",
        "weight decay pushes the weights away from zero",
        (HAND_SGD,),
    ),
    M(
        "weight-decay-divided-by-batch",
        "softmax_lightning/optim.py",
        "g = p.grad / batch_size  # the mean gradient over the minibatch\n                if wd:\n"
        "                    g = g + wd * p",
        "g = p.grad / batch_size  # the mean gradient over the minibatch\n                if wd:\n"
        "                    g = g + wd * p / batch_size",
        "weight decay is divided by the batch size like the summed gradient (256 times too weak)",
        (HAND_SGD,),
    ),
    M(
        "sgd-ignores-scheduled-lr",
        "softmax_lightning/optim.py",
        'lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]',
        'lr, mu, wd = self.defaults["lr"], group["momentum"], group["weight_decay"]',
        "the update uses the initial lr, so an lr schedule changes param_groups but not the steps",
        (COSINE, HAND_SGD),
    ),
    # ---------------------------------------------------------------------------- the model's wiring (model.py)
    M(
        "logits-without-bias",
        "softmax_lightning/model.py",
        "@ self.W + self.b  # (batch, 784)",
        "@ self.W  # (batch, 784)",
        "the model forgets its bias b",
        (ODD_BATCH, "tests/test_explain.py::test_evidence_maps_sum_to_the_models_logits_on_real_test_images"),
    ),
    M(
        "forward-switch-inverted",
        "softmax_lightning/model.py",
        'probabilities = softmax if self.hparams.softmax == "stable" else softmax_naive',
        'probabilities = softmax if self.hparams.softmax == "naive" else softmax_naive',
        "forward uses the naive softmax when asked for the stable one (and the other way round)",
        (SOFTMAX_OPTION,),
    ),
    M(
        "loss-switch-inverted",
        "softmax_lightning/model.py",
        'if self.hparams.softmax == "naive":',
        'if self.hparams.softmax != "naive":',
        "training uses the naive cross-entropy when asked for the stable one (and the other way round)",
        (
            SOFTMAX_OPTION,
            "tests/test_exercises.py::test_3_naive_training_hits_the_guard_and_stable_does_not",
            "tests/test_bad_input.py::test_non_finite_loss_stops_with_epoch_and_step",
        ),
    ),
    M(
        "weight-decay-not-passed",
        "softmax_lightning/model.py",
        "nesterov=hp.nesterov, weight_decay=hp.weight_decay",
        "nesterov=hp.nesterov",
        "weight_decay never reaches the optimizer",
        (f"{PATHS}::test_configure_optimizers_passes_on_every_hyper_parameter",),
    ),
    M(
        "zero-grad-removed",
        "softmax_lightning/model.py",
        "        opt.zero_grad()  # Lightning's pattern",
        "        # Lightning's pattern",
        "training_step no longer zeroes the gradients: a step the grad scaler skips leaves them stale",
        (
            f"{PATHS}::test_a_step_skipped_by_the_grad_scaler_leaves_no_stale_gradient",
            f"{PATHS}::test_every_backward_starts_from_zero_gradients_and_every_step_leaves_them_zero",
        ),
    ),
    M(
        "cosine-half-period",
        "softmax_lightning/model.py",
        "math.cos(math.pi * min(step, total) / total)",
        "math.cos(math.pi * min(step, total) / (2 * total))",
        "the cosine schedule spans a quarter period: it ends at lr/2 instead of 0",
        (COSINE, f"{MODEL}::test_cosine_schedule_reaches_zero_on_the_last_step"),
    ),
    M(
        "cosine-spans-one-epoch",
        "softmax_lightning/model.py",
        "steps = self.trainer.estimated_stepping_batches\n",
        "steps = self.trainer.num_training_batches\n",
        "the cosine schedule reaches 0 after one epoch instead of at the run's end",
        (COSINE, f"{MODEL}::test_cosine_schedule_reaches_zero_on_the_last_step"),
    ),
    M(
        "schedule-steps-on-skipped-update",
        "softmax_lightning/model.py",
        "if sched is not None and opt.optimizer.updates > updates:",
        "if sched is not None:",
        "the lr schedule advances on steps the grad scaler skipped: the first update takes a decayed lr",
        (f"{PATHS}::test_a_step_skipped_by_the_grad_scaler_does_not_advance_the_lr_schedule",),
    ),
    M(
        "cosine-resume-length-unchecked",
        "softmax_lightning/model.py",
        "if planned is not None and steps != planned:",
        "if False:",
        "a cosine run resumed with more epochs restarts its schedule from the middle of a longer curve",
        (f"{PATHS}::test_a_cosine_run_refuses_a_resume_that_would_change_its_length",),
    ),
    M(
        "cosine-length-checked-without-resume",
        "softmax_lightning/model.py",
        "planned = self._planned_steps if self.trainer.ckpt_path else None",
        "planned = self._planned_steps",
        "a new run from a cosine checkpoint's weights is refused as if it resumed, unless it has the same length",
        (f"{PATHS}::test_a_cosine_run_refuses_a_resume_that_would_change_its_length",),
    ),
    M(
        "checkpoint-fills-missing-weights",
        "softmax_lightning/model.py",
        '            elif name.startswith("metrics."):',
        "            else:",
        "a checkpoint without W loads silently, keeping the random initial W",
        (f"{PATHS}::test_the_weights_must_be_in_a_checkpoint_the_module_loads",),
    ),
    M(
        "ddp-checkpoint-keeps-rank-0-sums",
        "softmax_lightning/model.py",
        "if self.trainer.world_size > 1 and not self.trainer.interrupted:",
        "if False:",
        "under DDP a checkpoint keeps rank 0's train sums only: an epoch resumed from its middle averages them twice",
        ("tests/test_reliability.py::test_a_ddp_epoch_resumed_from_its_middle_averages_every_rank_once",),
    ),
    M(
        "train-metrics-not-persistent",
        "softmax_lightning/model.py",
        "self.metrics[name].persistent(True)",
        "self.metrics[name].persistent(False)",
        "the train metrics' sums are not saved in checkpoints: an epoch resumed mid-way averages only its second part",
        (RESUME_AT["validation twice an epoch"], RESUME_AT["every n train steps"]),
    ),
    M(
        "epoch-start-reset-removed",
        "softmax_lightning/model.py",
        "        for name in TRAIN_SUMS:\n            self.metrics[name].reset()\n",
        "",
        "a new epoch starts from the train metrics restored from an epoch-end checkpoint, not from empty ones",
        (RESUME_AT["sparse validation"], RESUME_AT["no validation"]),
    ),
    M(
        "divergence-gradient-check-removed",
        "softmax_lightning/model.py",
        "checks += [p.grad.detach().abs().amax() for p in (self.W, self.b) if p.grad is not None]",
        "pass",
        "the divergence guard checks the loss only: a finite loss with a nan gradient is applied",
        (
            GUARD,
            "tests/test_exercises.py::test_3_naive_training_hits_the_guard_and_stable_does_not",
            "tests/test_bad_input.py::test_non_finite_loss_stops_with_epoch_and_step",
        ),
    ),
    M(
        "divergence-threshold-removed",
        "softmax_lightning/model.py",
        "not math.isfinite(loss) or loss > DIVERGED or not grads_finite",
        "not math.isfinite(loss) or not grads_finite",
        "the divergence guard lets an astronomically large but finite loss train on",
        (f"{SAFETY}::test_arguments_that_cannot_train_are_one_line_and_leave_no_run_folder",),
    ),
    # ---------------------------------------------------------------------------- the data (data.py, fashion_mnist.py)
    M(
        "holdout-overlaps-training",
        "softmax_lightning/data.py",
        "val_idx, train_idx = perm[: hp.val_size], perm[hp.val_size :]",
        "val_idx, train_idx = perm[: hp.val_size], perm",
        "the validation holdout overlaps the training split (the model trains on its validation images)",
        (
            f"{DATA}::test_the_holdout_and_the_training_split_partition_the_training_file",
            f"{DATA}::test_val_is_the_test_split_by_default_and_a_seeded_holdout_otherwise",
        ),
    ),
    M(
        "pixels-divided-by-256",
        "softmax_lightning/data.py",
        ".float().div_(255), labels)",
        ".float().div_(256), labels)",
        "images are scaled by /256 instead of /255 (white is 0.996, not 1)",
        (
            f"{DATA}::test_the_holdout_and_the_training_split_partition_the_training_file",
            STATS,
            f"{DATA}::test_batches_shapes_ranges_and_counts",
        ),
    ),
    M(
        "standardise-with-holdout",
        "softmax_lightning/data.py",
        'Xtr = splits["train"][0]',
        "Xtr = X",
        "the standardisation statistics are computed on train + holdout (the holdout leaks into them)",
        (STATS,),
    ),
    M(
        "shuffle-ignores-epoch",
        "softmax_lightning/data.py",
        "manual_seed(self.seed + epoch)",
        "manual_seed(self.seed)",
        "every epoch sees the same shuffle order",
        (f"{DATA}::test_shuffle_order_is_a_function_of_seed_and_epoch",),
    ),
    M(
        "resume-skips-nothing",
        "softmax_lightning/data.py",
        "        for _ in range(skip):  # the checkpointed run already trained on these (gathering one costs ~0.1 ms)\n"
        "            next(batches)\n",
        "",
        "a run resumed mid-epoch trains again on the minibatches the checkpointed run had already trained on",
        (LOADER, RESUME_AT["validation twice an epoch"]),
    ),
    M(
        "resume-count-restarts",
        "softmax_lightning/data.py",
        "self._epoch, self._served, self._resume_at = epoch, skip, None",
        "self._epoch, self._served, self._resume_at = epoch, 0, None",
        "after a mid-epoch resume, the loader counts its minibatches from 0: the next checkpoint records too few",
        (LOADER, RESUME_AT["validation twice an epoch"]),
    ),
    M(
        "resume-skips-in-any-epoch",
        "softmax_lightning/data.py",
        "skip = self._resume_at[1] if self._resume_at and self._resume_at[0] == epoch else 0",
        "skip = self._resume_at[1] if self._resume_at else 0",
        "the batches to skip are skipped in whatever epoch comes next, even after an epoch-end checkpoint",
        (LOADER, RESUME_AT["no validation"]),
    ),
    M(
        "eval-shards-overlap",
        "softmax_lightning/data.py",
        "n * rank // num_replicas, n * (rank + 1) // num_replicas",
        "n * rank // num_replicas, -(-n * (rank + 1) // num_replicas)",
        "evaluation shards round their end up: neighbouring ranks evaluate an image twice",
        (SHARDS, "tests/test_reliability.py::test_three_process_evaluation_counts_every_image_once"),
    ),
    M(
        "standardisation-not-checkpointed",
        "softmax_lightning/data.py",
        'return {"input_stats": self.input_stats}',
        "return {}",
        "the data module's standardisation statistics are not saved in checkpoints",
        (PREDICT_STATS, "tests/test_tuned.py::test_tuned_recipe_beats_the_benchmark_and_restores_its_statistics"),
    ),
    M(
        "idx-size-check-removed",
        "softmax_lightning/fashion_mnist.py",
        '    if size != expected:\n        raise UserError(f"{path} is truncated or padded: {size} bytes, its header '
        'promises {expected}; {fix}")\n',
        "",
        "an IDX file whose size does not match its header is parsed anyway",
        (f"{DAMAGED_IDX}[truncated-truncated]", DAMAGED_IDX),
    ),
    M(
        "idx-count-limit-removed",
        "softmax_lightning/fashion_mnist.py",
        "    if count > MAX_ITEMS:\n",
        "    if False:\n",
        "an IDX header claiming 50 million images is read into memory",
        (f"{HOSTILE}::test_sparse_idx_claiming_50_million_images_is_refused_unread",),
    ),
    M(
        "label-10-accepted",
        "softmax_lightning/fashion_mnist.py",
        "if labels.max() > 9:",
        "if labels.max() > 10:",
        "a label file holding the class 10 (there are 0-9) is accepted",
        (f"{DAMAGED_IDX}[label 10-label 10 at index 63]", DAMAGED_IDX),
    ),
    # ---------------------------------------------------------------------------- checkpoints and resume
    M(
        "unsafe-checkpoint-load",
        "softmax_lightning/checkpoint.py",
        'ckpt = torch.load(path, map_location="cpu", weights_only=True)',
        'ckpt = torch.load(path, map_location="cpu", weights_only=False)',
        "checkpoints are unpickled unsafely: a crafted checkpoint runs its code",
        (
            f"{HOSTILE}::test_crafted_checkpoint_refused_by_the_shared_loader",
            f"{SAFETY}::test_a_crafted_checkpoint_never_runs_its_payload",
        ),
    ),
    M(
        "non-finite-bias-accepted",
        "softmax_lightning/checkpoint.py",
        "if not (torch.isfinite(W).all() and torch.isfinite(b).all()):",
        "if not torch.isfinite(W).all():",
        "a checkpoint whose bias is inf is accepted",
        (
            f"{SAFETY}::test_bad_checkpoint_files_are_one_line_and_leave_no_run_folder",
            f"{HOSTILE}::test_diverged_checkpoint_is_refused_not_printed_as_nan",
        ),
    ),
    M(
        "epochs-done-off-by-one",
        "softmax_lightning/checkpoint.py",
        'return int(ckpt.get("epoch", -1)) + 1',
        'return int(ckpt.get("epoch", -1))',
        "a finished run looks one epoch short: resuming it trains (and rewrites) again",
        (f"{SAFETY}::test_resuming_a_finished_run_changes_nothing",),
    ),
    M(
        "resume-refuses-equal-settings",
        "softmax_lightning/resume.py",
        "saved[group][name] != value",
        "saved[group][name] == value",
        "resuming refuses typed settings equal to the checkpoint's and accepts the ones that differ",
        (CHANGED, OWN_SETTINGS),
    ),
    M(
        "resume-data-changes-accepted",
        "softmax_lightning/resume.py",
        'and (group == "model" or data_too)',
        'and group == "model"',
        "resuming a run accepts typed data settings (batch size, seed, holdout) that differ from the checkpoint's",
        (CHANGED, OWN_SETTINGS),
    ),
    M(
        "unchecked-widened",
        "softmax_lightning/resume.py",
        'UNCHECKED = {"data_dir", "num_workers", "download"}',
        'UNCHECKED = {"data_dir", "num_workers", "download", "batch_size"}',
        "the batch size counts as 'how the data is read': a resume may change it, and the checkpoint's is not applied",
        (CHANGED,),
    ),
    M(
        "checkpoint-settings-not-applied",
        "softmax_lightning/resume.py",
        'if f"{group}.{name}" not in typed and',
        'if f"{group}.{name}" in typed and',
        "the checkpoint's own settings are not applied where the user typed none",
        (OUTSIDE_RUN, EVALUATE, OWN_SETTINGS),
    ),
    # ---------------------------------------------------------------------------- what the run records, prediction
    M(
        "pending-validation-not-saved",
        "softmax_lightning/callbacks.py",
        '"pending": dict(self._pending),',
        "",
        "an epoch's validation values known at a checkpoint are not saved: its history row loses them on resume",
        (RESUME_AT["sparse validation"],),
    ),
    M(
        "history-not-restored",
        "softmax_lightning/callbacks.py",
        'self.history = list(state.get("history", []))',
        "self.history = []",
        "a resumed run forgets the history of the epochs before its checkpoint",
        (RESUME_AT["no validation"], f"{SAFETY}::test_a_run_killed_after_its_last_checkpoint_is_completed_on_resume"),
    ),
    M(
        "predict-ignores-standardisation",
        "softmax_lightning/predict.py",
        "Xs = standardize(X, stats)  # what the model computes with",
        "Xs = X  # what the model computes with",
        "predict.py feeds raw pixels to a model trained on standardised ones",
        (PREDICT_STATS, "tests/test_figures_and_predict.py::test_predict_agrees_with_the_model_on_test_images"),
    ),
]


# ------------------------------------------------------------------------------------------------ running
class ScriptError(Exception):
    """A bad option, or a mutation that no longer fits the code: one ``error:`` line, exit code 2."""


def repository_files(root: Path) -> list[str]:
    """The files a checkout has: tracked ones and new ones git does not ignore (deleted ones left out)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ScriptError(
            f"cannot list the repository's files with git in {root} ({e}); run it in a git checkout"
        ) from None
    names = sorted(set(out.decode().split("\0")) - {""})
    return [n for n in names if (root / n).is_file() or (root / n).is_symlink()]


def copy_repository(root: Path, files: list[str], dest: Path) -> None:
    """Copy ``files`` from ``root`` into ``dest``; ``dest/data`` links to this checkout's data folder."""
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target, follow_symlinks=False)
    if (root / "data").exists() and not (dest / "data").exists():
        (dest / "data").symlink_to((root / "data").resolve(), target_is_directory=True)


def apply(dest: Path, m: Mutation) -> None:
    path = dest / m.file
    text = path.read_text()
    assert text.count(m.original) == 1, m.name  # checked before anything ran
    path.write_text(text.replace(m.original, m.mutated))


def failed_tests(output: str) -> list[str]:
    """The node ids pytest's short summary (``-ra``) lists as FAILED or ERROR."""
    return [m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", output, re.M)]


def run_pytest(dest: Path, tests: list[str], timeout: float, stop_first: bool = True) -> tuple[int | None, str, float]:
    """``pytest -q -p no:cacheprovider [-x] TESTS`` in ``dest``: (exit code or None on timeout, output, seconds).

    pytest runs in its own process group, so that a timeout or Ctrl-C also ends the processes its tests started."""
    env = {**os.environ, "PYTHONPATH": str(dest), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", *(["-x"] if stop_first else []), "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=dest, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        _end_group(proc)
        output, _ = proc.communicate()
        return None, output, time.perf_counter() - t0
    except BaseException:  # Ctrl-C: the tests' processes are in another session and did not get it
        _end_group(proc)
        proc.communicate()
        raise


def _end_group(proc: subprocess.Popen) -> None:
    """Kill the process group that ``proc`` leads (pytest and what its tests started)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)


def classify(code: int | None, output: str, m: Mutation) -> tuple[str, str]:
    """(status, why): see the module's docstring."""
    if code == 0:
        return "survived", "every chosen test passed"
    if code is None:
        return "error", "the tests ran past --timeout"
    failed = failed_tests(output)
    collection = code in (2, 4) or any("::" not in f for f in failed)  # a module or conftest.py failed to import
    if collection:  # killed only when the traceback runs through the mutated file (long or short style)
        if re.search(rf'{re.escape(m.file)}(?:", line \d+|:\d+:)', output):
            return "killed", f"importing the tests failed in the mutated {m.file}"
        return "error", f"pytest exited with {code}: the tests could not be collected, and not because of {m.file}"
    if code == 1:
        return "killed", failed[0] if failed else "a test failed"
    return "error", f"pytest exited with {code}"


def failure_lines(output: str, limit: int = 8) -> list[str]:
    """The first assertion lines of the first failure (pytest's ``E   ...`` lines): what the killing test saw."""
    return [line[1:].strip()[:300] for line in output.splitlines() if line.startswith("E ")][:limit]


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def check_tests_exist(selected: list[Mutation], full: bool) -> None:
    """Every chosen test must exist (pytest collects it), or its mutants could only end as errors."""
    tests = sorted({t for m in selected for t in m.tests})
    if full or not tests:
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        missing = re.findall(r"ERROR: not found: (\S+)", res.stdout + res.stderr)
        what = (
            f"test {missing[0].removeprefix(str(ROOT) + '/')} not found"
            if missing
            else f"pytest cannot collect them (exit code {res.returncode}): {tail(res.stdout + res.stderr, 1)}"
        )
        users = [m.name for m in selected if missing and any(missing[0].endswith(t) for t in m.tests)]
        raise ScriptError(f"the chosen tests of {', '.join(users) or 'the mutants'}: {what}; update scripts/mutate.py")


def check_imports_the_copy(dest: Path) -> None:
    """The copy's package must be the one imported (not an installed one), or no mutant could ever be killed."""
    env = {**os.environ, "PYTHONPATH": str(dest)}
    probe = "import importlib.util as u; print(u.find_spec('softmax_lightning').origin)"
    origin = subprocess.run([sys.executable, "-c", probe], cwd=dest, env=env, capture_output=True, text=True).stdout
    if not origin.strip() or Path(dest) not in Path(origin.strip()).resolve().parents:
        raise ScriptError(
            f"python imports softmax_lightning from {origin.strip() or 'nowhere'}, not from the copy "
            f"in {dest}; check how the package is installed"
        )


# ------------------------------------------------------------------------------------------------ options
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # one line, as the project's other scripts
            raise ScriptError(f"{message} (see python scripts/mutate.py --help)")

    p = Parser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument(
        "--only", action="append", metavar="NAME", default=[], help="run only this mutant (repeat for more; see --list)"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="run the whole suite (pytest's testpaths) against each mutant, not its chosen tests",
    )
    p.add_argument(
        "--fail-under",
        type=float,
        metavar="PERCENT",
        help="exit 1 when the score (killed / total, in percent) is below PERCENT",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1800,
        metavar="SECONDS",
        help="per mutant: tests still running after this are stopped and the mutant is an error (default 1800)",
    )
    p.add_argument("--report", default=REPORT, metavar="PATH", help=f"the JSON report (default {REPORT})")
    p.add_argument("--no-control", action="store_true", help="do not rerun the killing tests on an unmutated copy")
    p.add_argument("--keep", action="store_true", help="keep each mutated copy (its path is printed)")
    return p.parse_args(argv)


def check_options(args: argparse.Namespace) -> list[Mutation]:
    """Every option and every selected mutation, before anything runs; return the mutants to run."""
    by_name = {m.name: m for m in MUTATIONS}
    assert len(by_name) == len(MUTATIONS), "two mutations share a name"
    for name in args.only:
        if name not in by_name:
            close = difflib.get_close_matches(name, by_name, n=1)
            hint = f"did you mean {close[0]}?" if close else "see --list"
            raise ScriptError(f"--only {name}: no such mutant; {hint}")
    if args.fail_under is not None and not 0 <= args.fail_under <= 100:
        raise ScriptError(f"--fail-under must be a percentage in 0..100, got {args.fail_under:g}")
    if not args.timeout > 0:
        raise ScriptError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    report = Path(args.report)
    if report.is_dir():
        raise ScriptError(f"--report {report} is a folder; name a file such as {report / REPORT}")
    folder = report.resolve().parent
    if not (folder.is_dir() and os.access(folder, os.W_OK)):
        raise ScriptError(f"--report {report}: {folder} is not a writable folder; pass another path")
    selected = [by_name[n] for n in dict.fromkeys(args.only)] if args.only else MUTATIONS
    for m in selected:  # a mutation that no longer fits the code is the script's error, not a result
        path = ROOT / m.file
        count = path.read_text().count(m.original) if path.is_file() else -1
        if count != 1:
            where = "is missing" if count < 0 else f"holds its original text {count} times, not once"
            raise ScriptError(
                f"mutation {m.name}: {m.file} {where}; the code has changed: update the mutation in scripts/mutate.py"
            )
        try:  # a mutant that does not even parse would be "killed" by any test: a script error
            compile(path.read_text().replace(m.original, m.mutated), m.file, "exec")
        except SyntaxError as e:
            raise ScriptError(
                f"mutation {m.name}: the mutated {m.file} does not parse ({e.msg}, line {e.lineno}); "
                f"fix the mutation in scripts/mutate.py"
            ) from None
        for test in m.tests:
            if not (ROOT / test.split("::")[0]).is_file():
                raise ScriptError(
                    f"mutation {m.name}: test file {test.split('::')[0]} does not exist; update the "
                    f"mutation in scripts/mutate.py"
                )
    if not (ROOT / "data").exists():
        raise ScriptError(
            f"no data folder at {ROOT / 'data'}: the tests need Fashion-MNIST (run `make data` or `make train` once)"
        )
    return selected


# ------------------------------------------------------------------------------------------------ report
def write_report(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def score(results: list[dict]) -> dict:
    killed = sum(r["status"] == "killed" for r in results)
    return {"killed": killed, "total": len(results), "percent": round(100 * killed / len(results), 1) if results else 0}


def print_table(results: list[dict]) -> None:
    width = max(len(r["name"]) for r in results)
    print(f"\n{'mutant':{width}}  {'status':8}  {'seconds':>7}  killed by / why")
    for r in results:
        print(f"{r['name']:{width}}  {r['status']:8}  {r['seconds']:7.1f}  {r['why']}")


def control(results: list[dict], files: list[str], args: argparse.Namespace) -> None:
    """Rerun every killing test on an unmutated copy; a test that fails there too kills nothing."""
    killers = sorted({r["why"] for r in results if r["status"] == "killed" and "::" in r["why"]})
    if not killers:
        return
    print(f"\ncontrol: {plural(len(killers), 'killing test')} again, on the unmutated code ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="mutate-control-") as tmp:
        copy_repository(ROOT, files, Path(tmp))
        code, output, seconds = run_pytest(Path(tmp), killers, args.timeout * 2, stop_first=False)
    failing = set(failed_tests(output))
    print(f"control: pytest exit code {code} in {seconds:.0f} s; {len(failing)} fail without any mutation")
    if code not in (0, 1):
        print(tail(output, 15), file=sys.stderr)
    for r in results:
        if r["status"] == "killed" and (r["why"] in failing or code not in (0, 1)):
            r["status"], r["why"] = "error", f"{r['why']} also fails on the unmutated code"


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        selected = check_options(args)
        if args.list:
            width = max(len(m.name) for m in MUTATIONS)
            for m in MUTATIONS:
                print(f"{m.name:{width}}  {m.file.split('/')[-1]:16}  {m.breaks}")
            return 0
        report_file = Path(args.report).resolve()  # an earlier run's report is no part of the code under test
        files = [f for f in repository_files(ROOT) if (ROOT / f).resolve() != report_file]
        with tempfile.TemporaryDirectory(prefix="mutate-probe-") as tmp:
            copy_repository(ROOT, [f for f in files if f.startswith("softmax_lightning/")], Path(tmp))
            check_imports_the_copy(Path(tmp))
        check_tests_exist(selected, args.full)
    except ScriptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    report_path = Path(args.report)
    command = shlex.join(["python", "scripts/mutate.py", *(sys.argv[1:] if argv is None else argv)])
    report = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        "tests": "whole suite" if args.full else "each mutant's chosen tests",
        "complete": False,
        "score": {},
        "mutants": [],
    }
    results: list[dict] = report["mutants"]
    t_start = time.perf_counter()
    print(
        f"{plural(len(selected), 'mutant')}, {'the whole suite' if args.full else 'chosen tests'} each; report: "
        f"{report_path}",
        flush=True,
    )
    try:
        for i, m in enumerate(selected, 1):
            tests = [] if args.full else list(m.tests)
            dest = Path(tempfile.mkdtemp(prefix=f"mutate-{m.name}-"))
            try:
                copy_repository(ROOT, files, dest)
                apply(dest, m)
                code, output, seconds = run_pytest(dest, tests, args.timeout)
            finally:
                if args.keep:
                    print(f"  kept {dest}")
                else:
                    shutil.rmtree(dest, ignore_errors=True)
            status, why = classify(code, output, m)
            result = {
                "name": m.name,
                "file": m.file,
                "breaks": m.breaks,
                "status": status,
                "why": why,
                "seconds": round(seconds, 1),
                "exit_code": code,
                "tests": tests or ["(whole suite)"],
            }
            if status == "killed":
                result["failure"] = failure_lines(output)
            if status == "error":
                result["output_tail"] = tail(output)
            results.append(result)
            print(f"[{i}/{len(selected)}] {m.name}: {status.upper()} ({seconds:.0f} s) {why}", flush=True)
            report["score"] = score(results)
            write_report(report_path, report)
        if not args.no_control:
            control(results, files, args)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(results)} of {len(selected)} mutants done; partial report in {report_path}",
            file=sys.stderr,
        )
        report["score"] = score(results)
        write_report(report_path, report)
        return 130
    report.update(complete=True, score=score(results), seconds=round(time.perf_counter() - t_start))
    write_report(report_path, report)
    print_table(results)
    s = report["score"]
    print(
        f"\nscore: {s['killed']}/{s['total']} killed ({s['percent']}%) in {report['seconds'] / 60:.1f} min; "
        f"wrote {report_path}"
    )
    survivors = [r["name"] for r in results if r["status"] != "killed"]
    if survivors:
        print(f"not killed: {', '.join(survivors)}")
    if args.fail_under is not None and s["percent"] < args.fail_under:
        print(f"score {s['percent']}% is below --fail-under {args.fail_under:g}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
