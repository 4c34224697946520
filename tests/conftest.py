"""Shared fixtures: small synthetic datasets written through the real store, and what several tests read,
built once per session (also when pytest-xdist runs the tests in several worker processes)."""

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from zigzag import store

if "PYTEST_XDIST_WORKER" in os.environ:  # parallel workers share the cores: one thread each, and in their
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses (a test that sets --threads keeps its own)
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
# The `.test` workflow as the workflow and Slurm tests build it: cnn_a runs long enough for the Slurm test
# to kill it between two checkpoints.
WORKFLOW_STEPS, WORKFLOW_CHECKPOINT_EVERY = 100, 5
# The README's command for a workstation with several GPUs.
LOCAL_GPU = ["--profile", "workflow/profiles/local-gpu", "--resources", "gpu=2", "--cores", "2", "all_figures"]


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


def zigzag_main(capsys, *args, check=True):
    """Run the CLI in this process through its ``main`` (no interpreter and torch start-up), with what
    ``zigzag_cli`` returns: returncode, stdout and stderr. The thread count a --threads sets is undone."""
    import torch

    from zigzag.cli import main

    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        code = main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    if check and code != 0:
        raise AssertionError(f"zigzag {args} failed:\n{err}")
    return subprocess.CompletedProcess(args, code, out, err)


def workflow_copy(path):
    """The workflow, the package and the `.test` config (cnn_a made long enough to be killed mid-run, every
    run on device auto) in the new folder ``path``."""
    path.mkdir()
    shutil.copy(ROOT / "Snakefile", path)
    shutil.copytree(ROOT / "workflow", path / "workflow")
    shutil.copytree(ROOT / "zigzag", path / "zigzag", ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    config["runs"]["cnn_a"].update(steps=WORKFLOW_STEPS, checkpoint_every=WORKFLOW_CHECKPOINT_EVERY)
    for run in config["runs"].values():
        run["device"] = "auto"
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def workflow_environment(base, workdir, extra_bin=None):
    """A machine with GPU slots 0 and 1 and no scheduler-given device, running the package copied to
    ``workdir``; ``extra_bin`` goes first on the PATH."""
    env = {k: v for k, v in base.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    path = f"{extra_bin}:{env['PATH']}" if extra_bin else env["PATH"]
    return {**env, "PYTHONPATH": str(workdir), "PATH": path, "ZIGZAG_GPU_DEVICES": "0,1"}


@pytest.fixture(scope="session")
def built_workflow(tmp_path_factory):
    """The `.test` workflow (``workflow_copy``) built once per session by the multi-GPU workstation command
    (``LOCAL_GPU``), where a stand-in `nvidia-smi` that does nothing only makes the workflow see a GPU
    machine (training jobs then count against --resources gpu=2 and lease a slot; nothing opens a GPU).
    The workflow tests copy it; the Slurm test compares its outputs with it. Returns the workflow folder."""
    def build(root):
        (root / "bin").mkdir()
        (root / "bin" / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (root / "bin" / "nvidia-smi").chmod(0o755)
        work = workflow_copy(root / "work")
        result = subprocess.run([sys.executable, "-m", "snakemake", *LOCAL_GPU], cwd=work, capture_output=True,
                                text=True, env=workflow_environment(os.environ, work, root / "bin"))
        if result.returncode != 0:
            raise AssertionError(f"the `.test` workflow failed:\n{result.stdout}\n{result.stderr}")

    return built_once(tmp_path_factory, "workflow", build) / "work"


# Tests of minutes, run first so that under pytest-xdist they overlap the rest instead of ending the run
# (the Slurm test mostly waits for its jobs). With `--maxschedchunk 1` (README) each worker holds two tests
# at a time, in this order: one quick test after each long one puts each long test on a worker of its own.
LONG_TESTS = ("tests/test_slurm.py::", "tests/test_default_numbers.py::")


def pytest_collection_modifyitems(items):
    long = [item for item in items if item.nodeid.startswith(LONG_TESTS)]
    rest = [item for item in items if not item.nodeid.startswith(LONG_TESTS)]
    ordered = []
    for item in long:
        ordered += [item, *rest[:1]]
        rest = rest[1:]
    items[:] = ordered + rest


def benchmark_script(name):
    """benchmarks/<name>.py loaded as a module (the scripts are not a package; they import their shared modules,
    e.g. ``timing``, from their own folder, as ``python benchmarks/<name>.py`` does)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
