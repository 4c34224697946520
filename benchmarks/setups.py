"""What the step benchmarks train: dataset files, the Trainers' settings and one step of ``Trainer.run``'s loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zigzag import data as zdata
from zigzag import store
from zigzag.runconfig import RunConfig
from zigzag.trainer import Trainer

LAGS = 8
LR = 0.01  # any value: timings do not depend on it; small, so no run diverges during the benchmark
NEVER = 10 ** 9  # eval_every and checkpoint_every of the timed Trainers: only their step 0 evaluates
TIMED_STEPS = 10 ** 6  # more than any benchmark takes, so the last step's evaluation never comes


def cnn_dataset(tmp: Path) -> Path:
    """mnist5k: 4,000 training and 1,000 test images, 1 x 32 x 32."""
    path = tmp / "mnist5k.h5"
    if not path.exists():
        zdata.prepare("mnist5k", path)
    return path


def random_dataset(tmp: Path, samples: int, n_test: int = 64, seed: int = 0) -> Path:
    """A zigzag-dataset file of random CIFAR-sized uint8 images (3 x 32 x 32) with 10 random labels."""
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (samples, 3, 32, 32), dtype=np.uint8)
    test_x = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    train_y = rng.integers(0, 10, samples).astype(np.int64)
    test_y = rng.integers(0, 10, n_test).astype(np.int64)
    mean, std = zdata.channel_stats(train_x)
    config = {"source": "random (benchmark)", "n_train": samples, "n_test": n_test, "seed": seed,
              "image_shape": [3, 32, 32]}
    path = tmp / f"random{samples}.h5"
    store.write_dataset(path, store.DatasetArrays(train_x, train_y, test_x, test_y, mean, std, 10, config))
    return path


def trainer(settings: dict, args, out: Path, **more) -> Trainer:
    """A Trainer of ``settings`` (dataset, model, its length, ...) and ``more`` at the benchmark's learning rate,
    lags and seed on ``args.device`` in ``args.precision``, evaluating at its first and last step only, never
    checkpointing."""
    config = RunConfig.from_dict({**settings, "lr": LR, "lags": LAGS, "eval_every": NEVER,
                                  "checkpoint_every": NEVER, "device": args.device, "precision": args.precision,
                                  "seed": 0, **more})
    torch.manual_seed(0)
    return Trainer(config, out, progress=False)


def take_step(tr: Trainer) -> dict:
    """One iteration of ``Trainer.run``'s loop without progress line or checkpoint: the Trainer's next step and its
    row written (``Trainer.open_trajectory`` first)."""
    row = tr.step(tr.recorder.step)
    tr.recorder.write(row)
    return row
