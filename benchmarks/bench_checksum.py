"""Cost of the Fletcher-32 checksum: write and read time of zigzag files with and without it.

Writes and reads, through ``zigzag.store`` (``store.CHECKSUM`` on and off, alternating, in one run): a
trajectory the size of the default workflow's GD run (200 steps, L = 8), a long one, a raw-gradient dump
of ResNet-18 size and a dataset of CIFAR-10 size, after one untimed round. Reads follow the writes, so
they come from the page cache: the times are the CPU cost of the filter, not the disk's. Prints a
Markdown table of medians and the ratios with/without. Usage: python benchmarks/bench_checksum.py
[--repeats R] [--params P] [--rows R] [--tmpdir DIR]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from zigzag import store

LAGS = 8


def trajectory_case(n_steps):
    def write(path):
        writer = store.TrajectoryWriter.create(path, {}, n_params=1000, n_train=500, lags=LAGS)
        dot = np.where(np.arange(LAGS + 1) == 0, 1.0, 0.5)
        for k in range(n_steps):
            writer.append({"loss": 1.0, "accuracy": 0.5, "lr": 0.1, "epoch": k, "grad_norm": 1.0, "time": k,
                           "dot": np.where(np.arange(LAGS + 1) <= k, dot, np.nan), "opposite": np.full(LAGS + 1, 0.3)})
        writer.finish("completed")

    return write, store.read_trajectory


def raw_case(n_params, n_rows):
    rows = np.random.default_rng(0).standard_normal((2, n_params)).astype(np.float32)

    def write(path):
        writer = store.TrajectoryWriter.create(path, {}, n_params=n_params, n_train=500, lags=LAGS,
                                               raw_dtype="float32")
        for r in range(n_rows):
            writer.append_raw(r, rows[r % 2])
        writer.finish("completed")

    def read(path):
        with store.open_file(path, store.TRAJECTORY) as f:
            for r in range(n_rows):
                store.read_data(f["raw/gradients"], r)

    return write, read


def dataset_case(n_images):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n_images)
    arrays = store.DatasetArrays(images, labels, images[:1000], labels[:1000], mean=np.full(3, 0.5),
                                 std=np.full(3, 0.25), num_classes=10, config={"source": "bench"})
    return (lambda path: store.write_dataset(path, arrays)), store.read_dataset


def timed(fn, path) -> float:
    start = time.perf_counter()
    fn(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--params", type=int, default=11_173_962, help="gradient entries (default: ResNet-18)")
    parser.add_argument("--rows", type=int, default=4, help="raw-gradient rows")
    parser.add_argument("--tmpdir", help="where the files are written (default: the system's)")
    args = parser.parse_args()
    cases = {
        "trajectory, 200 steps": trajectory_case(200),
        "trajectory, 20,000 steps": trajectory_case(20_000),
        f"raw dump, {args.rows} x {args.params:,} float32": raw_case(args.params, args.rows),
        "dataset, 50,000 + 1,000 images 3 x 32 x 32": dataset_case(50_000),
    }
    print("| file | write, no checksum | write, Fletcher-32 | ratio | read, no checksum | read, Fletcher-32 | ratio |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        path = Path(tmp) / "bench.h5"
        for name, (write, read) in cases.items():
            times = {(op, on): [] for op in ("write", "read") for on in (False, True)}
            write(path)  # untimed: imports and first allocations
            read(path)
            path.unlink()
            for _ in range(args.repeats):
                for on in (False, True):
                    store.CHECKSUM = on
                    times["write", on].append(timed(write, path))
                    times["read", on].append(timed(read, path))
                    path.unlink()
            med = {key: statistics.median(values) for key, values in times.items()}
            cells = [f"{med[op, False] * 1e3:.1f} ms | {med[op, True] * 1e3:.1f} ms | "
                     f"{med[op, True] / med[op, False]:.2f}" for op in ("write", "read")]
            print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)
    store.CHECKSUM = True


if __name__ == "__main__":
    main()
