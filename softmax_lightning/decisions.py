"""From class probabilities to decisions: the Bayes rule under costs, abstaining, and a change of prior.

The chapter predicts ``argmax_k p(k|x)``. That minimises the expected number of mistakes, and nothing else.
Each function below is one rule of decision theory, small enough to check by hand (exercise 4 runs them all):

* ``bayes_decisions``: with a cost matrix, choose the class of least expected cost, ``argmin_k sum_j C[j, k] p_j``.
* ``abstain_decisions``: add one more action, "abstain" (hand the case to a person), that costs ``c`` whatever the
  true class is; abstain where even the best class is expected to cost more than ``c``.
* ``chow_decisions``: Chow's reject rule, abstain where ``max_k p_k < 1 - c``. It *is* ``abstain_decisions`` under
  0/1 costs: predicting k costs ``1 - p_k`` in expectation, so the best class costs ``1 - max_k p_k``, and
  abstaining wins when ``1 - max_k p_k > c``.
* ``shift_prior``: the model learned ``p(k|x)`` on training data with class frequencies ``pi``; where the classes
  occur with frequencies ``pi'`` instead, ``p'(k|x) = p(k|x) pi'_k / pi_k``, renormalised (Bayes' rule: the
  likelihood ``p(x|k)`` is unchanged, only the prior moves).

Every rule trusts the probabilities it is given: ``bayes_decisions`` acts on ``p(k|x)`` for classes that are not the
top one, so it needs those to be calibrated, not only the top label's.

Conventions: ``C[j, k]`` is the cost of predicting class ``k`` when the true class is ``j`` (rows true, columns
predicted). A decision is a class index, or ``ABSTAIN`` (-1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from softmax_lightning.errors import UserError
from softmax_lightning.io import read_small_text

ABSTAIN = -1  # the decision "abstain": hand the case to a person


def zero_one_cost(n: int) -> Tensor:
    """The cost matrix of plain accuracy: 0 on the diagonal, 1 for every mistake (``argmin`` = ``argmax``)."""
    return 1 - torch.eye(n)


def expected_costs(probs: Tensor, cost: Tensor) -> Tensor:
    """The expected cost of each possible prediction, ``R[i, k] = sum_j C[j, k] p_ij``.

    Args:
        probs: class probabilities, shape ``(n, classes)``.
        cost: ``C[true, predicted]``, shape ``(classes, classes)``.

    Returns:
        Shape ``(n, classes)``.

    Example (missing class 1 costs 10, a false alarm 1):
        >>> expected_costs(torch.tensor([[0.8, 0.2]]), torch.tensor([[0.0, 1.0], [10.0, 0.0]]))
        tensor([[2.0000, 0.8000]])
    """
    return probs @ cost  # (n, classes) @ (classes, classes) -> (n, classes)


def bayes_decisions(probs: Tensor, cost: Tensor) -> Tensor:
    """The Bayes rule: the class of least expected cost, ``argmin_k sum_j C[j, k] p_j``, shape ``(n,)``.

    With ``zero_one_cost`` it is the argmax. Example (class 1 is less likely, but missing it costs 10):
        >>> bayes_decisions(torch.tensor([[0.8, 0.2]]), torch.tensor([[0.0, 1.0], [10.0, 0.0]]))
        tensor([1])
    """
    return expected_costs(probs, cost).argmin(1)


def abstain_decisions(probs: Tensor, cost: Tensor, abstain_cost: float) -> Tensor:
    """The Bayes rule with one more action: abstain (``ABSTAIN``), at ``abstain_cost`` whatever the true class.

    Abstains where the least expected cost of any class is above ``abstain_cost``; elsewhere ``bayes_decisions``.

    Example (0/1 costs, asking costs 0.3: abstain where the best guess is wrong with probability > 0.3):
        >>> abstain_decisions(torch.tensor([[0.6, 0.4], [0.8, 0.2]]), zero_one_cost(2), 0.3)
        tensor([-1,  0])
    """
    best, pred = expected_costs(probs, cost).min(1)  # (n,), (n,)
    return torch.where(best > abstain_cost, torch.full_like(pred, ABSTAIN), pred)


def chow_threshold(abstain_cost: float) -> float:
    """Chow's threshold for 0/1 costs: abstaining at cost ``c`` pays off exactly where ``max_k p_k < 1 - c``."""
    return 1.0 - abstain_cost


def chow_decisions(probs: Tensor, threshold: float) -> Tensor:
    """Chow's reject rule: the argmax, or ``ABSTAIN`` where the top probability is below ``threshold``.

    The same decisions as ``abstain_decisions(probs, zero_one_cost(n), 1 - threshold)`` (see the module docstring).
    """
    top, pred = probs.max(1)  # (n,), (n,)
    return torch.where(top < threshold, torch.full_like(pred, ABSTAIN), pred)


def shift_prior(probs: Tensor, deploy_prior: Tensor, train_prior: Tensor | None = None) -> Tensor:
    """Probabilities for data whose class frequencies are ``deploy_prior`` instead of ``train_prior``.

    ``p'(k|x) = p(k|x) pi'_k / pi_k``, renormalised over k. Both priors are positive; they need not sum to 1.

    Args:
        probs: ``p(k|x)``, shape ``(n, classes)``.
        deploy_prior: class frequencies where the model is used, shape ``(classes,)``.
        train_prior: class frequencies of the training data (default: uniform, as Fashion-MNIST's training split:
            6,000 images per class).

    Example (a 50/50 case, where class 1 is 3 times as common as class 0):
        >>> shift_prior(torch.tensor([[0.5, 0.5]]), torch.tensor([1.0, 3.0]))
        tensor([[0.2500, 0.7500]])
    """
    if train_prior is None:
        train_prior = torch.ones_like(deploy_prior)
    shifted = probs * (deploy_prior / train_prior)  # (n, classes) * (classes,); the priors' scales cancel below
    return shifted / shifted.sum(1, keepdim=True)


def decide(probs: Tensor, cost: Tensor | None = None, abstain_cost: float | None = None) -> Tensor:
    """The rule ``scripts/predict.py`` applies: one rule, from the options given.

    * neither: argmax (the chapter);
    * ``cost``: ``bayes_decisions``;
    * ``abstain_cost`` with ``cost``: ``abstain_decisions``;
    * ``abstain_cost`` alone: Chow's rule, ``chow_decisions(probs, 1 - abstain_cost)`` (the same as
      ``abstain_decisions`` under 0/1 costs).
    """
    if cost is None:
        if abstain_cost is None:
            return probs.argmax(1)
        return chow_decisions(probs, chow_threshold(abstain_cost))
    if abstain_cost is None:
        return bayes_decisions(probs, cost)
    return abstain_decisions(probs, cost, abstain_cost)


def check_cost_matrix(cost: Tensor, n: int, where: str) -> Tensor:
    """``cost`` if it is ``n x n`` with finite, non-negative entries; otherwise a ``UserError`` naming ``where``."""
    if cost.shape != (n, n):
        raise UserError(
            f"{where} has shape {tuple(cost.shape)}; it needs {n} rows of {n} numbers "
            f"(rows: true class, columns: predicted)"
        )
    if not torch.isfinite(cost).all():
        raise UserError(f"{where} holds a non-finite number (inf or nan); write {n} rows of {n} finite costs")
    if (cost < 0).any():
        j, k = (int(v) for v in (cost < 0).nonzero()[0])
        raise UserError(
            f"{where} holds a negative cost ({float(cost[j, k])} at row {j + 1}, column {k + 1}); costs "
            f"are >= 0 (0 for a right answer)"
        )
    return cost


def load_cost_matrix(path: str | Path, n: int = 10, flag: str = "--cost-matrix") -> Tensor:
    """A checked ``n x n`` cost matrix (rows: true class, columns: predicted) from a JSON or whitespace/CSV file."""
    text = read_small_text(path, "cost matrix", flag, max_bytes=64 * 1024)
    try:
        rows = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [[float(v) for v in line.replace(",", " ").split()] for line in text.splitlines() if line.strip()]
        )
        cost = torch.tensor(rows, dtype=torch.float32)
    except (ValueError, TypeError) as e:
        raise UserError(f"cost matrix {path} is not a table of numbers ({e}); write {n} rows of {n} numbers") from None
    return check_cost_matrix(cost, n, f"cost matrix {path} ({flag})")


def check_abstain_cost(c: float, flag: str = "--abstain-cost") -> float:
    """``c`` if it is a finite number >= 0 (the cost of handing a case to a person); otherwise a ``UserError``."""
    if not (math.isfinite(c) and c >= 0):
        raise UserError(
            f"{flag} must be a finite number >= 0 (the cost of abstaining, in the cost matrix's units; "
            f"without a cost matrix a mistake costs 1), got {c}"
        )
    return c


def parse_prior(text: str, n: int = 10, flag: str = "--prior") -> Tensor:
    """``n`` positive, finite class frequencies from ``"a,b,c,..."`` (commas or spaces), normalised to sum to 1."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        values = []
    prior = torch.tensor(values, dtype=torch.float64)
    if len(values) != n or not (torch.isfinite(prior).all() and (prior > 0).all()):
        raise UserError(
            f"{flag} needs {n} positive numbers, one per class in class order, separated by commas "
            f"(e.g. 1,1,1,1,1,1,3,1,1,1), got {text!r}"
        )
    return (prior / prior.sum()).float()
