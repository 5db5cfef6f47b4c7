"""The chapter's ``d2l.sgd`` as a ``torch.optim.Optimizer``, so Lightning can drive and checkpoint it.

The update is written out by hand (no ``torch.optim.SGD``)::

    g = grad / batch_size + weight_decay * param      # the chapter: loss.sum().backward(), then / batch_size
    buf = momentum * buf + g                          # only when momentum > 0
    g = g + momentum * buf if nesterov else buf
    param -= lr * g
    grad = 0

With ``momentum=0`` and ``weight_decay=0`` this is exactly the chapter's ``param -= lr * param.grad /
batch_size; param.grad.zero_()``. ``lr`` lives in ``param_groups`` so Lightning's LR schedulers work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


class ChapterSGD(torch.optim.Optimizer):
    """Minibatch SGD of the chapter, plus the momentum / Nesterov / weight decay that a tuned recipe uses.

    Args:
        params: the tensors to update (``[W, b]``).
        lr: learning rate (> 0).
        momentum: heavy-ball coefficient in [0, 1); 0 is the chapter.
        nesterov: use Nesterov's look-ahead form (needs ``momentum > 0``).
        weight_decay: L2 coefficient added to the per-sample-mean gradient (>= 0).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.1,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.updates = 0  # updates applied; a step that a mixed-precision grad scaler skips never reaches step()

    @torch.no_grad()
    def step(self, closure: Callable[[], object] | None = None, *, batch_size: int) -> None:  # type: ignore[override]
        """Apply one update with gradients of a *summed* loss over ``batch_size`` samples, then zero them.

        ``batch_size`` is the chapter's ``updater(X.shape[0])``: the minibatch's actual size (the last one is smaller).
        ``closure`` is Lightning's (it runs the step's hooks); it is called first, as ``torch.optim`` optimizers do.
        """
        if closure is not None:
            with torch.enable_grad():
                closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not (wd or mu):  # the chapter's update: param -= lr * param.grad / batch_size
                    p.sub_(p.grad * (lr / batch_size))
                    p.grad.zero_()  # ... and param.grad.zero_()
                    continue
                g = p.grad / batch_size  # the mean gradient over the minibatch
                if wd:
                    g = g + wd * p
                if mu:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = g.clone()
                    else:
                        buf.mul_(mu).add_(g)
                    g = g + mu * buf if group["nesterov"] else buf
                p.sub_(lr * g)
                p.grad.zero_()
        self.updates += 1
