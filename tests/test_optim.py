"""The hand-written SGD: the chapter's update, and its momentum / Nesterov / weight-decay extensions."""

import pytest
import torch

from softmax_lightning import functional as F
from softmax_lightning.optim import ChapterSGD


def test_one_step_is_the_chapters_update_on_a_real_shaped_batch():
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(256, 784, generator=g), torch.randint(0, 10, (256,), generator=g)
    W = torch.normal(0, 0.01, (784, 10), generator=g).requires_grad_()
    b = torch.zeros(10, requires_grad=True)
    W0, b0 = W.detach().clone(), b.detach().clone()
    F.cross_entropy(X @ W + b, y).sum().backward()
    gW, gb = W.grad.clone(), b.grad.clone()
    ChapterSGD([W, b], lr=0.1).step(batch_size=256)
    torch.testing.assert_close(W.detach(), W0 - 0.1 * gW / 256, rtol=0, atol=1e-7)  # d2l.sgd, by hand
    torch.testing.assert_close(b.detach(), b0 - 0.1 * gb / 256, rtol=0, atol=1e-7)
    assert (W.grad == 0).all() and (b.grad == 0).all()  # grads zeroed, as d2l.sgd does


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.9, False, 0.0), (0.9, True, 1e-3), (0.0, False, 5e-2)])
def test_momentum_nesterov_weight_decay_match_hand_computation(momentum, nesterov, wd):
    p = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = ChapterSGD([p], lr=0.5, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    value, buf = p.detach().clone(), None
    for grad_sum in ([2.0, 4.0, -6.0], [1.0, 0.0, 1.0], [-3.0, 2.0, 0.5]):
        p.grad = torch.tensor(grad_sum)
        opt.step(batch_size=2)
        d = torch.tensor(grad_sum) / 2 + wd * value  # per-sample mean gradient + L2
        if momentum:
            buf = d.clone() if buf is None else momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        value = value - 0.5 * d
        torch.testing.assert_close(p.detach(), value, rtol=0, atol=1e-6)
    # and torch's own SGD (a reference only) agrees on a mean-reduced gradient
    q = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    ref = torch.optim.SGD([q], lr=0.5, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    for grad_sum in ([2.0, 4.0, -6.0], [1.0, 0.0, 1.0], [-3.0, 2.0, 0.5]):
        q.grad = torch.tensor(grad_sum) / 2
        ref.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ChapterSGD([torch.zeros(1, requires_grad=True)], lr=0)
    with pytest.raises(ValueError):
        ChapterSGD([torch.zeros(1, requires_grad=True)], lr=0.1, nesterov=True)


def test_step_hooks_and_profiler_label_still_work():
    """ChapterSGD is a plain torch Optimizer: step hooks and the profiler label work as for any optimizer."""
    W = torch.ones(3, requires_grad=True)
    opt = ChapterSGD([W], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    W.grad = torch.ones(3)
    opt.step(batch_size=2)
    assert calls == ["pre", "post"]
    torch.testing.assert_close(W.detach(), torch.full((3,), 0.95), rtol=0, atol=1e-7)
    with torch.profiler.profile() as prof:
        W.grad = torch.ones(3)
        opt.step(batch_size=2)
    assert any(e.name == "Optimizer.step#ChapterSGD.step" for e in prof.events())
