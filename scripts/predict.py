"""Classify Fashion-MNIST test images or your own PNG/JPEG files with a trained checkpoint.

python scripts/predict.py                       # first 16 test images with the newest run's last.ckpt
python scripts/predict.py --explain             # also explain.png: why each prediction
python scripts/predict.py photo.jpg             # your own photos (light backgrounds inverted; --no-invert)
python scripts/predict.py --json | jq .         # machine-readable, on stdout alone
python scripts/predict.py --help
"""

import sys

from softmax_lightning.predict import main

if __name__ == "__main__":
    sys.exit(main())
