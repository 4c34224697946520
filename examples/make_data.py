"""Write blobs.npz next to this script: a synthetic task of 5 classes of 20-dimensional vectors, each class a
Gaussian cloud around a centre of its own, the clouds overlapping so that a network has something to learn
(seed 0: the same file on every machine)."""

from pathlib import Path

import numpy as np

CLASSES, DIMENSIONS, N_TRAIN, N_TEST = 5, 20, 500, 200


def main():
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (CLASSES, DIMENSIONS))

    def split(n):
        labels = rng.integers(0, CLASSES, n)
        vectors = centres[labels] + rng.normal(0.0, 1.5, (n, DIMENSIONS))
        return vectors.astype(np.float32), labels.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(N_TRAIN), split(N_TEST)
    path = Path(__file__).resolve().parent / "blobs.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"wrote {path}: {N_TRAIN} training and {N_TEST} test vectors of {DIMENSIONS} numbers, {CLASSES} classes")


if __name__ == "__main__":
    main()
