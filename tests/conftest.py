"""Shared fixtures: small synthetic datasets written through the real store, and what several tests read,
built once per session (also when pytest-xdist runs the tests in several worker processes)."""

import fcntl
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from zigzag import store


def write_synthetic_dataset(path, n_train=96, n_test=32, channels=1, size=16, classes=10, seed=0):
    """Random uint8 images whose class shifts the mean brightness, so a model can learn something."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 160, (n, channels, size, size)) + (labels * 9)[:, None, None, None]
        return images.astype(np.uint8), labels.astype(np.int64)

    (train_x, train_y), (test_x, test_y) = split(n_train), split(n_test)
    pixels = train_x.astype(np.float64) / 255.0
    store.write_dataset(path, store.DatasetArrays(
        train_x, train_y, test_x, test_y,
        mean=pixels.mean(axis=(0, 2, 3)), std=pixels.std(axis=(0, 2, 3)), num_classes=classes,
        config={"source": "synthetic", "seed": seed}))
    return path


@pytest.fixture
def tiny_dataset(tmp_path):
    return str(write_synthetic_dataset(tmp_path / "tiny.h5"))


def built_once(tmp_path_factory, name, build):
    """The folder ``name`` filled by ``build(folder)`` once per test session. Under pytest-xdist the workers
    share it: the first to ask builds it under a file lock in the session's common base temp, the others wait
    for it (a build that failed is retried, and fails again in the worker that asked)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """Inputs for the error tests, built once: a dataset, two 8-step trajectories of it (``traj``, ``other``)
    and the analysis of the first. Tests read them and never change them."""
    def build(root):
        data = write_synthetic_dataset(root / "data.h5")
        for name in ("a", "b"):
            zigzag_cli("train", "--dataset", data, "--model", "cnn", "--width", "0.5", "--lr", "0.05", "--steps",
                       8, "--lags", 3, "--micro-batch", 32, "--device", "cpu", "--threads", 1, "--quiet",
                       "--out", root / f"{name}.h5")
        zigzag_cli("analyze", root / "a.h5", "--out", root / "a_an.h5", "--h", "3", "--windows", "2")

    root = built_once(tmp_path_factory, "files", build)
    return {"data": root / "data.h5", "traj": root / "a.h5", "other": root / "b.h5", "analysis": root / "a_an.h5"}


def zigzag_cli(*args, check=True):
    """Run the CLI in a subprocess, as a workflow rule would."""
    result = subprocess.run([sys.executable, "-m", "zigzag", *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"zigzag {args} failed:\n{result.stderr}")
    return result
