"""The workflow on a real single-node Slurm cluster (.ci/slurm-localhost.sh starts it, the test stops it).

The `.test` workflow runs through the project's Slurm profile with Snakemake's Slurm executor plugin
(job states from squeue: the cluster has no accounting database), one training job is killed through
the scheduler (scancel) once it has written a checkpoint, and the re-run resumes it; the outputs then
equal those of an uninterrupted local run on the multi-GPU profile (there `nvidia-smi` is a stand-in that
only makes the workflow see a GPU machine, so training jobs count against --resources gpu=2). The profile
makes training jobs ask Slurm for one of the node's two declared GPUs; nothing here opens a GPU.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "slurm-localhost.sh"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The commands the README gives (workstation with several GPUs; Slurm cluster without accounting).
LOCAL = ["--profile", "workflow/profiles/local-gpu", "--resources", "gpu=2", "--cores", "2", "all_figures"]
SLURM = ["--profile", "workflow/profiles/slurm", "all_figures", "--slurm-status-command", "squeue",
         "--slurm-init-seconds-before-status-checks", "2"]
STEPS, CHECKPOINT_EVERY = 100, 5  # the run killed mid-way: long enough to be caught between checkpoints
pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """munged, slurmctld and slurmd on localhost; the environment that reaches them."""
    if shutil.which("slurmctld") is None:
        message = "Slurm is not installed: run `.ci/slurm-localhost.sh install` as root (.ci/run does)"
        if os.environ.get("CI"):  # CI installed it, so a missing Slurm there is a failure, never a skip
            pytest.fail(message)
        pytest.skip(message)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", SCRIPT, "start", state], capture_output=True, text=True)
    if started.returncode != 0:  # the script printed the daemon's log and stopped what it had started
        pytest.fail(f"the Slurm cluster did not start:\n{started.stderr}", pytrace=False)
    try:
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run(["bash", SCRIPT, "stop", state], check=True)


def workflow_copy(path):
    """The workflow, the package and the `.test` config with cnn_a made long enough to be killed mid-run."""
    shutil.copy(ROOT / "Snakefile", path)
    shutil.copytree(ROOT / "workflow", path / "workflow")
    shutil.copytree(ROOT / "zigzag", path / "zigzag", ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    config["runs"]["cnn_a"].update(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY)
    for run in config["runs"].values():
        run["device"] = "auto"
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def fake_gpu_bin(tmp_path_factory):
    """A folder with an `nvidia-smi` that does nothing: the workflow then gives training jobs gpu=1."""
    folder = tmp_path_factory.mktemp("bin")
    (folder / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def environment(base, workdir, extra_bin=None):
    """A machine with GPU slots 0 and 1 and no scheduler-given device, running the copied package."""
    env = {k: v for k, v in base.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    path = f"{extra_bin}:{env['PATH']}" if extra_bin else env["PATH"]
    return {**env, "PYTHONPATH": str(workdir), "PATH": path, "ZIGZAG_GPU_DEVICES": "0,1"}


@pytest.fixture
def spawned():
    """The processes a test starts; those still running when it ends are stopped (before the cluster)."""
    processes = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.terminate()  # Snakemake cancels its Slurm jobs / ends its local jobs
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def numbers(results: Path) -> dict:
    """Every dataset of every HDF5 output except wall-clock times, by relative path."""
    found = {}
    for path in sorted(results.rglob("*.h5")):
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: found.__setitem__(f"{path.relative_to(results)}:{name}", obj[()])
                         if isinstance(obj, h5py.Dataset) and "time" not in name else None)
    return found


def test_workflow_on_slurm_resumes_a_cancelled_job_and_equals_a_local_run(cluster, tmp_path, fake_gpu_bin, spawned):
    # The reference (run meanwhile): the multi-GPU workstation profile, each training job on a leased slot.
    (tmp_path / "local").mkdir()
    local = workflow_copy(tmp_path / "local")
    reference = subprocess.Popen([*SNAKEMAKE, *LOCAL], cwd=local, env=environment(os.environ, local, fake_gpu_bin),
                                 stdout=open(tmp_path / "local.log", "w"), stderr=subprocess.STDOUT)
    spawned.append(reference)

    # Through Slurm; cnn_a is cancelled by the scheduler once its first checkpoint exists.
    (tmp_path / "slurm").mkdir()
    work = workflow_copy(tmp_path / "slurm")
    env = environment(cluster, work)
    first = subprocess.Popen([*SNAKEMAKE, *SLURM], cwd=work, env=env, stdout=open(tmp_path / "first.log", "w"),
                             stderr=subprocess.STDOUT)
    spawned.append(first)
    checkpoint = work / "results" / "runs" / "cnn_a" / "trajectory.h5.resume" / "checkpoint.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.1)
    job = re.search(r"SLURM jobid (\d+) \(log: \S+/rule_train/cnn_a/\d+\.log\)", (tmp_path / "first.log").read_text())
    subprocess.run(["scancel", job.group(1)], env=env, check=True)
    assert first.wait(timeout=600) != 0
    out = (tmp_path / "first.log").read_text()
    assert f"SLURM-job '{job.group(1)}' failed, SLURM status is: 'CANCELLED'" in out
    assert checkpoint.exists() and not (work / "results" / "runs" / "cnn_a" / "trajectory.h5").exists()
    assert (work / ".snakemake" / "slurm_logs" / "rule_train" / "cnn_a" / f"{job.group(1)}.log").exists()

    again = subprocess.run([*SNAKEMAKE, *SLURM], cwd=work, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = re.search(r"resuming at step (\d+) from", (work / "results" / "logs" / "train" / "cnn_a.log").read_text())
    assert resumed and CHECKPOINT_EVERY <= int(resumed.group(1)) < STEPS
    assert not checkpoint.parent.exists()

    assert reference.wait(timeout=600) == 0, (tmp_path / "local.log").read_text()
    for run in ("cnn_a", "cnn_b"):
        with h5py.File(local / "results" / "runs" / run / "trajectory.h5", "r") as f:
            assert f.attrs["gpu_lease"] in (0, 1) and f.attrs["gpu_given"] == ""
    assert sorted(p.name for p in (local / "results" / "gpu-locks").iterdir()) <= ["gpu0.lock", "gpu1.lock"]

    # Same numbers and files as the uninterrupted local run.
    expected, got = numbers(local / "results"), numbers(work / "results")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(got[key], value, equal_nan=value.dtype.kind == "f"), key
    figures = sorted(p.name for p in (local / "results" / "figures").iterdir())
    assert figures and sorted(p.name for p in (work / "results" / "figures").iterdir()) == figures

    # Each training job asked Slurm for one GPU (the other jobs for none), took no lease and used what it
    # was given; the logs of successful jobs went to results/logs/ (the plugin deletes their Slurm logs).
    submitted = re.findall(r"SLURM jobid (\d+) \(log: \S+/slurm_logs/(rule_\w+)/", out + again.stdout + again.stderr)
    assert sorted({rule for _, rule in submitted}) == ["rule_analyze", "rule_figure_fig_a", "rule_figure_fig_b",
                                                       "rule_figure_fig_sign", "rule_prepare_dataset", "rule_train"]
    for jobid, rule in submitted:
        shown = subprocess.run(["scontrol", "show", "job", jobid], env=env, capture_output=True, text=True).stdout
        assert ("TresPerJob=gres:gpu:1" in shown) == (rule == "rule_train"), (rule, shown)
    for run in ("cnn_a", "cnn_b"):
        with h5py.File(work / "results" / "runs" / run / "trajectory.h5", "r") as f:
            assert f.attrs["gpu_lease"] == -1 and f.attrs["gpu_given"] != ""
        assert (work / "results" / "logs" / "train" / f"{run}.log").exists()
