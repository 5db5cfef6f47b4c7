"""Classify Fashion-MNIST test images or your own PNG/JPEG files with a trained checkpoint.

    python scripts/predict.py                       # first 16 test images with the newest run's last.ckpt
    python scripts/predict.py photo.jpg --invert    # your own photos
    python scripts/predict.py --help
"""

from softmax_lightning.io import fast_exit
from softmax_lightning.predict import main

if __name__ == "__main__":
    fast_exit(main())  # skips 1-2 s of interpreter teardown; every output is already written
