"""Train the chapter's softmax regression on Fashion-MNIST with the Lightning Trainer (fit, then test).

python scripts/train.py                                  # the chapter's recipe
python scripts/train.py --config configs/tuned.yaml      # the tuned recipe (beyond the book)
python scripts/train.py fit --trainer.max_epochs 3       # LightningCLI's subcommands: fit, validate, test, predict
python scripts/train.py --help                           # every option (--model.*, --data.*, --trainer.*)
"""

import sys

from softmax_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
