"""The chapter's math as small pure functions: softmax, cross-entropy, accuracy.

Each function takes tensors and returns tensors; none of them calls ``torch.softmax``,
``log_softmax`` or ``F.cross_entropy`` (the tests use those as references).

Reference: d2l.ai, "softmax回归的从零开始实现" (softmax regression from scratch), sections 3, 5, 6.
The ``*_naive`` functions are the chapter's cells verbatim; the others are the numerically
stable forms the chapter's exercises 1-3 ask for.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "softmax",
    "softmax_naive",
    "log_softmax",
    "cross_entropy",
    "cross_entropy_naive",
    "cross_entropy_grad",
    "CrossEntropy",
    "accuracy",
    "evidence",
]


def softmax_naive(X: Tensor) -> Tensor:
    """The chapter's softmax: ``exp(X) / exp(X).sum(1)``; overflows once a logit passes ~88 in float32.

    Args:
        X: logits, shape ``(batch, classes)``.

    Returns:
        Row-wise probabilities, same shape as ``X`` (``nan`` where ``exp`` overflowed).

    Example:
        >>> softmax_naive(torch.tensor([[0.0, 0.0], [0.0, 100.0]]))
        tensor([[0.5000, 0.5000],
                [0.0000,    nan]])
    """
    X_exp = torch.exp(X)
    partition = X_exp.sum(1, keepdim=True)  # (batch, 1)
    return X_exp / partition  # broadcast (batch, classes) / (batch, 1)


def log_softmax(X: Tensor) -> Tensor:
    """Row-wise ``log softmax(X)`` by log-sum-exp: ``X - max - log(sum(exp(X - max)))``; never overflows.

    Args:
        X: logits, shape ``(batch, classes)``.

    Returns:
        Log-probabilities, same shape as ``X``; every entry is finite for finite ``X``.
    """
    shifted = X - X.amax(1, keepdim=True).detach()  # (batch, classes), every row's max is 0; the shift is a constant
    return shifted - torch.log(torch.exp(shifted).sum(1, keepdim=True))


def softmax(X: Tensor) -> Tensor:
    """Numerically stable softmax: subtract each row's max before ``exp`` (same value, no overflow).

    Args:
        X: logits, shape ``(batch, classes)``.

    Returns:
        Row-wise probabilities in [0, 1], each row summing to 1. Nothing overflows, but an entry far below its row's
        max still underflows to exactly 0 (float32: more than ~104 below; subnormal, with fewer digits, from ~87.3), so
        ``-log(softmax(X))`` can be ``inf`` and its gradient ``nan`` (exercise 2): take logs with ``log_softmax``.

    Example:
        >>> softmax(torch.tensor([[0.0, 0.0], [0.0, 1000.0]]))
        tensor([[0.5000, 0.5000],
                [0.0000, 1.0000]])
    """
    X_exp = torch.exp(X - X.amax(1, keepdim=True))  # (batch, classes), entries in [0, 1], the max's exactly 1
    return X_exp / X_exp.sum(1, keepdim=True)


def cross_entropy_naive(y_hat: Tensor, y: Tensor) -> Tensor:
    """The chapter's cross-entropy on probabilities: ``-log(y_hat[range(n), y])``; ``inf`` when that is 0.

    Args:
        y_hat: predicted probabilities, shape ``(batch, classes)``.
        y: true class indices, shape ``(batch,)``, int64.

    Returns:
        Per-sample loss, shape ``(batch,)``.

    Example (the chapter's own cell):
        >>> y_hat = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
        >>> cross_entropy_naive(y_hat, torch.tensor([0, 2]))
        tensor([2.3026, 0.6931])
    """
    return -torch.log(y_hat[torch.arange(len(y_hat), device=y_hat.device), y])


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Stable cross-entropy from logits: ``-log_softmax(logits)[range(n), y]`` (finite for finite logits).

    Why not the chapter's two steps, softmax then ``-log``? A probability can round to 0 in float32, and ``-log(0)``
    is ``inf``. Working from the logits never forms that probability, so the value and the gradient stay right however
    far the true class trails. (The numbers, from exercise 2: ``cross_entropy_naive(softmax(logits), y)`` agrees with
    it to float32 rounding while the true logit is less than ~87 below the max; from ~89 its gradient is already
    ``inf``/``nan`` (``1/p`` overflows) while its loss is still right; the loss loses digits once ``p`` is a tiny
    subnormal (0.02 off at 100, up to 0.7 just below 104) and is ``inf`` past ~104.) Gradients come from autograd, as
    in the chapter; the hand-written backward is ``cross_entropy_grad`` below.

    Args:
        logits: unnormalised scores, shape ``(batch, classes)``.
        y: true class indices, shape ``(batch,)``, int64.

    Returns:
        Per-sample loss, shape ``(batch,)``.

    Example (the log of probabilities is a valid logit vector, so the chapter's cell works through it too):
        >>> y_hat = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
        >>> cross_entropy(torch.log(y_hat), torch.tensor([0, 2]))
        tensor([2.3026, 0.6931])
    """
    return -log_softmax(logits).gather(1, y.unsqueeze(1)).squeeze(1)  # the chapter's y_hat[range(n), y], in logs


def cross_entropy_grad(logits: Tensor, y: Tensor) -> Tensor:
    """The derivative of ``cross_entropy`` by hand: ``d loss_i / d logits_i = softmax(logits_i) - onehot(y_i)``.

    d2l derives it in section 3.4, "softmax及其导数" (softmax and its derivative). A lesson, not the training path:
    training uses autograd, as the chapter does. ``CrossEntropy`` wires it into autograd, and the tests check both
    against autograd with ``torch.autograd.gradcheck``.

    Example (one sample, two classes, true class 0):
        >>> cross_entropy_grad(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
        tensor([[-0.5000,  0.5000]])
    """
    grad = softmax(logits)  # (batch, classes)
    return grad.scatter_add(1, y.unsqueeze(1), -torch.ones_like(grad[:, :1]))  # - onehot(y)


class CrossEntropy(torch.autograd.Function):
    """``cross_entropy`` as an autograd ``Function`` whose backward is ``cross_entropy_grad`` (the lesson above)."""

    @staticmethod
    def forward(ctx, logits: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(logits, y)
        return cross_entropy(logits, y)

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None]:
        logits, y = ctx.saved_tensors
        return cross_entropy_grad(logits, y) * grad_loss.unsqueeze(1), None  # chain rule: (batch, classes) * (batch, 1)


def accuracy(y_hat: Tensor, y: Tensor) -> Tensor:
    """The chapter's ``accuracy``: the *number* of correct argmax predictions (divide by ``len(y)`` for a rate).

    Args:
        y_hat: scores or probabilities, shape ``(batch, classes)``.
        y: true class indices, shape ``(batch,)``.

    Returns:
        A 0-d float tensor: how many rows have ``argmax == y``.

    Example (the chapter's cell: one right out of two):
        >>> accuracy(torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]]), torch.tensor([0, 2]))
        tensor(1.)
    """
    preds = y_hat.argmax(dim=1)  # (batch, classes) -> (batch,)
    return (preds.type(y.dtype) == y).sum().float()


def evidence(X: Tensor, W: Tensor) -> Tensor:
    """Per-class pixel evidence: ``E[n, k, i] = X[n, i] * W[i, k]``, each class's row as a square map.

    The model's logits are sums over pixels, ``logit[n, k] = b[k] + sum_i X[n, i] * W[i, k]``, so each term is how
    much pixel ``i`` of image ``n`` speaks for (positive) or against (negative) class ``k``, and summing a map gives
    the logit without its bias: ``evidence(X, W).sum((2, 3)) + b == X.reshape(n, -1) @ W + b``.

    Args:
        X: images, shape ``(n, 1, 28, 28)``, ``(n, 28, 28)`` or ``(n, 784)`` (as the model sees them: standardised
            if the model was trained on standardised inputs).
        W: weights, shape ``(784, classes)``; any square number of pixels works.

    Returns:
        Shape ``(n, classes, 28, 28)`` (``(n, classes, side, side)``, ``side = sqrt(W.shape[0])``).

    Example (one 2x2 image, two classes):
        >>> X = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
        >>> W = torch.tensor([[1.0, -1.0], [5.0, 5.0], [5.0, 5.0], [0.5, 1.0]])
        >>> E = evidence(X, W)
        >>> E[0, 1]  # class 1: pixel 0 speaks against it, pixel 3 for it; the dark pixels say nothing
        tensor([[-1.,  0.],
                [ 0.,  2.]])
        >>> E.sum((2, 3)), X.reshape(1, -1) @ W  # the maps sum to the logits (without b)
        (tensor([[2., 1.]]), tensor([[2., 1.]]))
    """
    n, (pixels, classes) = len(X), W.shape
    side = round(pixels**0.5)  # 28
    x = X.reshape(n, pixels)  # (n, 784)
    E = x[:, None, :] * W.T[None]  # (n, 1, 784) * (1, classes, 784) -> (n, classes, 784)
    return E.reshape(n, classes, side, side)  # (n, classes, 28, 28)
