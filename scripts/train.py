"""Train the chapter's softmax regression on Fashion-MNIST with the Lightning Trainer (fit, then test).

    python scripts/train.py                                  # the chapter's recipe
    python scripts/train.py --config configs/tuned.yaml      # the tuned recipe (issue: beyond the book)
    python scripts/train.py --help                           # every option (--model.*, --data.*, --trainer.*)
"""

from softmax_lightning.io import fast_exit
from softmax_lightning.cli import main

if __name__ == "__main__":
    fast_exit(main())  # skips 1-2 s of interpreter teardown; every output is already written
