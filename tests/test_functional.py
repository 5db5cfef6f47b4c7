"""The hand-written math against torch's own, forward and backward, with explicit tolerances."""

import pytest
import torch
import torch.nn.functional as TF

from softmax_lightning import functional as F

TOL = dict(rtol=1e-5, atol=1e-6)


def logits_cases():
    g = torch.Generator().manual_seed(0)
    yield "ordinary", torch.randn(64, 10, generator=g, dtype=torch.float64)
    yield (
        "extreme",
        torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, -999.0, -1000.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
    )
    yield "float32", torch.randn(16, 10, generator=g) * 30


@pytest.mark.parametrize("name,X", list(logits_cases()))
def test_softmax_matches_torch_forward_and_grad(name, X):
    X1, X2 = X.clone().requires_grad_(), X.clone().requires_grad_()
    p, ref = F.softmax(X1), torch.softmax(X2, dim=1)
    torch.testing.assert_close(p, ref, **TOL)
    w = torch.linspace(-1, 1, X.shape[1], dtype=X.dtype)  # a non-trivial upstream gradient
    (p * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(X1.grad, X2.grad, **TOL)


@pytest.mark.parametrize("name,X", list(logits_cases()))
def test_cross_entropy_matches_torch_forward_and_grad(name, X):
    y = torch.arange(len(X)) % X.shape[1]
    X1, X2 = X.clone().requires_grad_(), X.clone().requires_grad_()
    loss, ref = F.cross_entropy(X1, y), TF.cross_entropy(X2, y, reduction="none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ref, **TOL)
    torch.testing.assert_close(F.log_softmax(X), TF.log_softmax(X, dim=1), **TOL)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(X1.grad, X2.grad, **TOL)


def test_naive_versions_agree_where_finite():
    X = torch.randn(32, 10, dtype=torch.float64)
    y = torch.arange(32) % 10
    torch.testing.assert_close(F.softmax_naive(X), F.softmax(X), **TOL)
    torch.testing.assert_close(F.cross_entropy_naive(F.softmax_naive(X), y), F.cross_entropy(X, y), **TOL)
    torch.testing.assert_close(
        F.cross_entropy_naive(torch.softmax(X, 1), y), TF.nll_loss(torch.log_softmax(X, 1), y, reduction="none"), **TOL
    )


def test_chapter_cells():
    y_hat = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
    y = torch.tensor([0, 2])
    expected = torch.tensor([2.3026, 0.6931])
    torch.testing.assert_close(F.cross_entropy_naive(y_hat, y), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(F.cross_entropy(torch.log(y_hat), y), expected, rtol=0, atol=1e-4)
    assert F.accuracy(y_hat, y) / len(y) == 0.5
    X = torch.normal(0, 1, (2, 5))
    for softmax in (F.softmax, F.softmax_naive):
        p = softmax(X)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(1), torch.ones(2))


def test_stable_softmax_survives_where_naive_overflows():
    X = torch.tensor([[100.0, 0.0, -100.0]])
    assert not torch.isfinite(F.softmax_naive(X)).all()
    p = F.softmax(X)
    assert torch.isfinite(p).all() and p[0, 0] == 1.0
    y = torch.tensor([2])
    assert torch.isinf(F.cross_entropy_naive(F.softmax(X), y)).all()  # p = 0 exactly: the log's domain
    torch.testing.assert_close(F.cross_entropy(X, y), torch.tensor([200.0]))


def test_hand_written_backward_is_softmax_minus_onehot_and_passes_gradcheck():
    """The lesson of "softmax及其导数": d loss / d logits = softmax - onehot, checked against autograd."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    assert torch.autograd.gradcheck(lambda z: F.CrossEntropy.apply(z, y), (logits,))
    F.cross_entropy(logits, y).sum().backward()  # autograd through the training path
    torch.testing.assert_close(F.cross_entropy_grad(logits.detach(), y), logits.grad, **TOL)
    onehot = TF.one_hot(y, 5).double()
    torch.testing.assert_close(F.cross_entropy_grad(logits.detach(), y), torch.softmax(logits.detach(), 1) - onehot)


def test_accuracy_counts_the_argmax_hits_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(500, 10, generator=g), torch.randint(0, 10, (500,), generator=g)
    assert F.accuracy(logits, y) == (logits.argmax(1) == y).sum()
    assert F.accuracy(logits, logits.argmax(1)) == 500 and F.accuracy(logits, logits.argmin(1)) == 0
