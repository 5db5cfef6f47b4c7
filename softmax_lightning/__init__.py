"""d2l's softmax regression from scratch, as a PyTorch Lightning project.

Modules, in the chapter's order: ``data`` (Fashion-MNIST), ``functional`` (softmax, cross-entropy, accuracy),
``model`` (W, b, forward, the manual-SGD step), ``optim`` (the hand-written SGD), ``callbacks`` / ``figures``
(the chapter's pictures), ``cli`` (``scripts/train.py``), ``checkpoint`` and ``io`` (safe loading and writing).
"""
