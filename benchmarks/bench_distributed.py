"""The cost of splitting a run across processes on a CPU: a full-batch GD step of two gloo ranks of one thread
each (``torchrun --nproc-per-node 2 -m zigzag train``) against one process of two threads, on a small ResNet-18.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_distributed.py [--steps N] [--samples N] [--width W]

Both train the same run (ResNet-18 at ``--width`` on ``--samples`` synthetic 3 x 32 x 32 images, micro-batch
32, lags 8, no sharpness) through the command line; a step's time is the median of the differences of the
trajectory's ``time`` column after the first step (so neither start-up nor the first step's allocations
count). Prints the medians, also of one process of one thread, and the ratios (2 ranks / 1 process; above 1:
the split costs more than it gains). The scaling of a step over several GPUs is not measured here (one GPU at
most is lent to this project).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def step_seconds(out: Path) -> float:
    from zigzag import store

    return float(np.median(np.diff(store.read_trajectory(out).steps["time"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25)
    args = parser.parse_args()
    from conftest import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = write_synthetic_dataset(folder / "data.h5", n_train=args.samples, n_test=32, channels=3, size=32)
        settings = json.dumps(dict(dataset=str(data), model="resnet18", width=args.width, lr=0.01, steps=args.steps,
                                   lags=8, micro_batch=32, eval_every=args.steps, device="cpu",
                                   checkpoint_every=args.steps))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        train = ["-m", "zigzag", "train", "--settings", settings, "--quiet"]
        for threads in (2, 1):
            out = folder / f"one{threads}.h5"
            subprocess.run([sys.executable, *train, "--threads", str(threads), "--out", str(out)], env=env, check=True)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        *train, "--threads", "1", "--out", str(folder / "two.h5")], env=env, check=True)
        one, single, two = (step_seconds(folder / f"{name}.h5") for name in ("one2", "one1", "two"))
    print(f"resnet18 width {args.width:g}, {args.samples} images, {args.steps} steps")
    print(f"one process, 2 threads : {one * 1000:8.1f} ms per step")
    print(f"one process, 1 thread  : {single * 1000:8.1f} ms per step")
    print(f"2 ranks, 1 thread each : {two * 1000:8.1f} ms per step")
    print(f"ratio (2 ranks / 1 process of 2 threads): {two / one:.2f}; (2 ranks / 1 thread): {two / single:.2f}")


if __name__ == "__main__":
    main()
