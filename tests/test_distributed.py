"""One run across processes (zigzag/distributed.py): two gloo ranks of torchrun against one process, resumes from
one process count to the other, and a rank killed mid-run. Two launches in all: each costs every rank's start."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_synthetic_dataset

from zigzag import store
from zigzag.distributed import Group
from zigzag.errors import Interrupted, ZigzagError
from zigzag.runconfig import RunConfig
from zigzag.trainer import Trainer

STEPS = 8
SETTINGS = dict(model="cnn", width=0.5, lr=0.05, steps=STEPS, lags=3, micro_batch=24, batch_norm=True, eval_every=1,
                checkpoint_every=2, device="cpu", raw_gradients="every:1", per_layer=True,
                sharpness={"every": "every:3", "subset": 48, "tol": 1e-6, "ncv": 12})

FLIPS = 3  # entries within rounding of zero whose sign the summation order may flip, per tensor


def train_here(data, out, stop_at=None):
    """One process, in this one, on one thread (the thread count binds a checkpoint); with ``stop_at``
    interrupted when it reaches that step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = Trainer(RunConfig.from_dict({**SETTINGS, "dataset": str(data)}), out, progress=False)
    if stop_at is not None:
        step = trainer.step

        def interrupted(k):
            if k == stop_at:
                raise KeyboardInterrupt
            return step(k)
        trainer.step = interrupted
    try:
        return trainer.run()
    except Interrupted:
        trainer.recorder.close()  # as a killed process would: the file no longer open here
        raise
    finally:
        torch.set_num_threads(threads)


def launch(data, out, processes=2):
    """``torchrun --nproc-per-node processes -m zigzag train ...`` on one thread per process, started."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                             "--standalone", "-m", "zigzag", "train", "--settings",
                             json.dumps({**SETTINGS, "dataset": str(data)}), "--threads", "1", "--out", str(out),
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The dataset and its uninterrupted one-process trajectory."""
    root = tmp_path_factory.mktemp("distributed")
    data = write_synthetic_dataset(root / "data.h5")
    assert train_here(data, root / "one.h5") == "completed"
    return data, read(root / "one.h5")


def read(path):
    trajectory = store.read_trajectory(path)
    trajectory.path = path
    return trajectory


def assert_same_numbers(one, other):
    """Dots, losses, accuracies within 1e-6 (dots relative to |g_k| |g_(k-l)|: the summation order), the
    opposite counts within ``FLIPS`` entries per tensor outside the tensors whose gradient is rounding noise (a
    convolution's bias before BatchNorm: its signs are arbitrary), sharpness within the solver's tol, raw
    gradients to rounding."""
    a, b = one.steps, other.steps
    for key in ("loss", "accuracy", "test_loss", "test_accuracy", "grad_norm", "grad_eigvec_cosine"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-9, err_msg=key)
    scale = np.sqrt(np.outer(a["dot"][:, 0], a["dot"][:, 0]).max())
    np.testing.assert_allclose(b["dot"], a["dot"], rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(b["layer_dot"], a["layer_dot"], rtol=1e-6, atol=1e-6 * scale)
    noise = a["layer_dot"][:, :, 0].max(0) < 1e-12 * a["dot"][:, 0].max()
    assert noise.sum() == 3  # the biases of the three convolutions before BatchNorm
    sizes = np.asarray(one.attrs["layer_sizes"])
    flips = np.abs(b["layer_opposite"] - a["layer_opposite"]) * sizes[None, :, None]
    assert np.nanmax(flips[:, ~noise]) <= FLIPS + 1e-6
    share = (sizes[noise].sum() + FLIPS) / one.attrs["n_params"]
    for key in ("opposite", "opposite_nonzero", "opposite_weight"):
        np.testing.assert_allclose(b[key], a[key], atol=share, err_msg=key)
    np.testing.assert_allclose(b["sharpness"], a["sharpness"], rtol=SETTINGS["sharpness"]["tol"])
    with h5py.File(one.path) as f, h5py.File(other.path) as g:
        assert f["raw/gradients"].shape == g["raw/gradients"].shape == (STEPS, one.attrs["n_params"])
        np.testing.assert_allclose(g["raw/gradients"][:], f["raw/gradients"][:], rtol=1e-4, atol=1e-6 * scale ** .5)


def test_two_ranks_resume_a_one_process_run_with_its_numbers(reference, tmp_path):
    """Steps 0-1 in one process, interrupted; torchrun's two gloo ranks resume at the checkpoint of step 2 and
    finish: every row matches the one-process run's."""
    data, one = reference
    out = tmp_path / "run.h5"
    with pytest.raises(Interrupted, match="checkpoint at step 2"):
        train_here(data, out, stop_at=3)
    job = launch(data, out)
    stdout, stderr = job.communicate(timeout=240)
    assert job.returncode == 0, stderr
    assert stdout.strip() == f"{out}: completed"  # rank 0 alone prints
    assert "resuming at step 2" in stderr
    two = read(out)
    assert_same_numbers(one, two)


def test_a_killed_rank_ends_the_job_within_a_minute_and_one_process_resumes(reference, tmp_path):
    """Rank 1 killed after the checkpoint of step 2: torchrun and rank 0 end within a minute, zigzag's one line
    says where a rerun resumes; one process then resumes the two ranks' checkpoint, and the whole run (its first
    steps taken by the two ranks) matches the one-process run."""
    data, one = reference
    out = tmp_path / "run.h5"
    job = launch(data, out)
    checkpoint = out.with_name(out.name + ".resume") / "checkpoint.pt"
    while not checkpoint.exists():
        assert job.poll() is None, job.communicate()[1]
        time.sleep(0.02)
    ranks = {}
    for entry in Path("/proc").iterdir():  # the two workers: children of torchrun, told apart by RANK
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == job.pid:
                rank = next(v for v in (entry / "environ").read_bytes().split(b"\0") if v.startswith(b"RANK="))
                ranks[int(rank[5:])] = int(entry.name)
        except (OSError, StopIteration):
            continue
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=90)
    assert job.returncode != 0 and time.monotonic() - killed < 60
    ours = [line for line in stderr.splitlines() if line.startswith("zigzag:")]
    assert len(ours) == 1 and "rerun to resume from the checkpoint at step" in ours[0], stderr
    assert not out.exists()
    assert train_here(data, out) == "completed"
    two_then_one = read(out)
    assert_same_numbers(one, two_then_one)


def test_more_processes_than_micro_batches_stop_before_the_first_step():
    """One line naming the limit; the split gives every rank whole micro-batches, in the one-process order."""
    with pytest.raises(ZigzagError, match="invalid processes=5: a step has only 4 micro-batch"):
        Group(0, 5).check_launch({}, 4)
    assert [Group(r, 3).batch_share(100, 24) for r in range(3)] == [(0, 48), (48, 96), (96, 100)]
