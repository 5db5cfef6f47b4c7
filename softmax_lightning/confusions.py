"""Which classes the model mixes up, and examples of each mix-up: the inputs of ``figures.plot_confusions``.

* ``most_confused_pairs``: a pure function of a confusion matrix (true rows, predicted columns);
* ``ConfusionExamples``: fed validation batches ``(X, y, preds)``, keeps the first few images of every mistake
  ``(true, predicted)``, in bounded memory.
"""

from __future__ import annotations

import torch
from torch import Tensor


def most_confused_pairs(matrix: Tensor, k: int = 3) -> list[tuple[int, int]]:
    """The ``k`` pairs of classes most often mistaken for each other, most confused first.

    A pair ``{a, b}`` scores ``matrix[a, b] + matrix[b, a]``: mistakes in both directions count, because the pixels
    that separate ``a`` from ``b`` (``W[:, a] - W[:, b]``) are the same for both. Each pair comes back as ``(a, b)``
    with ``a -> b`` (true ``a`` predicted as ``b``) the more frequent direction (on a tie, the smaller index first).
    Equal scores: smaller class indices first. Pairs never confused are left out, so fewer than ``k`` may come back.

    Args:
        matrix: counts, shape ``(classes, classes)``; ``matrix[t, p]``: how many of class ``t`` were predicted ``p``.

    Example (class 2 taken for 0 five times, 0 for 2 once; 1 for 0 three times):
        >>> most_confused_pairs(torch.tensor([[9, 0, 1], [3, 7, 0], [5, 0, 5]]), k=3)
        [(2, 0), (1, 0)]
    """
    m = matrix.detach().cpu().long()
    both = m + m.T  # (classes, classes), symmetric: a pair's mistakes in both directions
    i, j = torch.triu_indices(len(m), len(m), offset=1).tolist()  # every unordered pair once (i < j)
    ranked = sorted(zip(i, j), key=lambda ab: (-int(both[ab]), ab))
    return [(a, b) if m[a, b] >= m[b, a] else (b, a) for a, b in ranked[:k] if both[a, b] > 0]


class ConfusionExamples:
    """The first ``per_pair`` images of every mistake ``(true, predicted)`` among the batches fed to ``update``.

    Memory is bounded whatever the data: at most ``classes * (classes - 1) * per_pair`` images (10 classes, 4 per
    pair: 360 images of 28x28 floats, 1.1 MB), kept on the CPU. Only the mistakes are copied off the device.

    Args:
        per_pair: images kept per ``(true, predicted)`` pair.

    Example:
        >>> keep = ConfusionExamples(per_pair=2)
        >>> X = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 28, 28)  # four images: all 0s, 1s, 2s, 3s
        >>> keep.update(X, y=torch.tensor([6, 6, 0, 6]), preds=torch.tensor([0, 6, 6, 0]))
        >>> {pair: images[:, 0, 0].tolist() for pair, images in keep.examples.items()}
        {(6, 0): [0.0, 3.0], (0, 6): [2.0]}
    """

    def __init__(self, per_pair: int = 4) -> None:
        if per_pair < 1:
            raise ValueError(f"per_pair must be >= 1, got {per_pair}")
        self.per_pair = per_pair
        self._kept: dict[tuple[int, int], list[Tensor]] = {}  # (true, predicted) -> images (28, 28), in order seen

    def reset(self) -> None:
        """Forget every image (call at the start of each validation epoch: the examples then match the last model)."""
        self._kept.clear()

    def update(self, X: Tensor, y: Tensor, preds: Tensor) -> None:
        """Keep the batch's mistakes that their pair still has room for.

        Args:
            X: images, shape ``(batch, 1, 28, 28)`` or ``(batch, 28, 28)``, on any device.
            y: true classes, shape ``(batch,)``.
            preds: predicted classes, shape ``(batch,)`` (what ``validation_step`` returns).
        """
        trues, predicted = y.detach().cpu().tolist(), preds.detach().cpu().tolist()  # two small copies per batch
        chosen, room = [], {}
        for i, key in enumerate(zip(trues, predicted)):
            if key[0] == key[1]:
                continue
            room.setdefault(key, self.per_pair - len(self._kept.get(key, ())))
            if room[key] > 0:
                room[key] -= 1
                chosen.append((i, key))
        if not chosen:
            return
        idx = torch.tensor([i for i, _ in chosen], device=X.device)
        images = X.detach().index_select(0, idx).float().cpu()  # only the kept mistakes leave the device
        images = images.reshape(len(chosen), *X.shape[-2:])  # (kept, 28, 28)
        for image, (_, key) in zip(images, chosen):
            self._kept.setdefault(key, []).append(image)

    @property
    def examples(self) -> dict[tuple[int, int], Tensor]:
        """``{(true, predicted): images (m, 28, 28)}`` for every mistake seen, ``1 <= m <= per_pair``."""
        return {key: torch.stack(images) for key, images in self._kept.items()}

    def state_dict(self) -> dict[str, Tensor | int]:
        """Plain tensors (loadable with ``torch.load(weights_only=True)``), e.g. for a callback's checkpoint state."""
        keys = [key for key, images in self._kept.items() for _ in images]
        images = [image for images in self._kept.values() for image in images]
        return {
            "per_pair": self.per_pair,
            "pairs": torch.tensor(keys, dtype=torch.long).reshape(-1, 2),
            "images": torch.stack(images) if images else torch.zeros(0, 28, 28),
        }

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        self.per_pair = int(state["per_pair"])
        self._kept = {}
        for (t, p), image in zip(state["pairs"].tolist(), state["images"]):
            self._kept.setdefault((t, p), []).append(image)
