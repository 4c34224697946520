"""The workflow on a real single-node Slurm cluster (.ci/slurm-localhost.sh starts it, the test stops it).

The `.test` workflow runs through the project's Slurm profile with Snakemake's Slurm executor plugin
(job states from squeue: the cluster has no accounting database), one training job is killed through
the scheduler (scancel) once it has written a checkpoint, and the re-run resumes it; the outputs then
equal those of an uninterrupted local run on the multi-GPU profile (conftest.py, ``built_workflow``, built
meanwhile). The profile makes training jobs ask Slurm for one of the node's two declared GPUs; nothing here
opens a GPU.
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
from conftest import WORKFLOW_CHECKPOINT_EVERY, WORKFLOW_STEPS, workflow_copy, workflow_environment

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "slurm-localhost.sh"
# Snakemake checking its Slurm jobs every second. The plugin waits 10 s longer after each check that found
# no job finished (up to 180 s: its care for busy clusters), so on this one-node cluster each job took
# 14-36 s to be seen finished; the jobs themselves run the plugin's own job step, unpatched.
SNAKEMAKE = [sys.executable, "-c", """
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

RemoteExecutor.next_seconds_between_status_checks = property(lambda self: 1, lambda self, seconds: None)
from snakemake.cli import main

main()
"""]
# The README's command for a Slurm cluster without accounting.
SLURM = ["--profile", "workflow/profiles/slurm", "all_figures", "--slurm-status-command", "squeue",
         "--slurm-init-seconds-before-status-checks", "1"]
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


def test_workflow_on_slurm_resumes_a_cancelled_job_and_equals_a_local_run(cluster, tmp_path, spawned, request):
    # Through Slurm; cnn_a is cancelled by the scheduler once its first checkpoint exists.
    work = workflow_copy(tmp_path / "slurm")
    env = workflow_environment(cluster, work)
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

    again = subprocess.Popen([*SNAKEMAKE, *SLURM], cwd=work, env=env, stdout=open(tmp_path / "again.log", "w"),
                             stderr=subprocess.STDOUT)
    spawned.append(again)
    local = request.getfixturevalue("built_workflow")  # the reference: built meanwhile, or already
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()
    resumed = re.search(r"resuming at step (\d+) from", (work / "results" / "logs" / "train" / "cnn_a.log").read_text())
    assert resumed and WORKFLOW_CHECKPOINT_EVERY <= int(resumed.group(1)) < WORKFLOW_STEPS
    assert not checkpoint.parent.exists()

    # Same numbers and files as the uninterrupted local run.
    expected, got = numbers(local / "results"), numbers(work / "results")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(got[key], value, equal_nan=value.dtype.kind == "f"), key
    figures = sorted(p.name for p in (local / "results" / "figures").iterdir())
    assert figures and sorted(p.name for p in (work / "results" / "figures").iterdir()) == figures

    # Each training job asked Slurm for one GPU (the other jobs for none), took no lease and used what it
    # was given; the logs of successful jobs went to results/logs/ (the plugin deletes their Slurm logs).
    logs = out + (tmp_path / "again.log").read_text()
    submitted = re.findall(r"SLURM jobid (\d+) \(log: \S+/slurm_logs/(rule_\w+)/", logs)
    assert sorted({rule for _, rule in submitted}) == ["rule_analyze", "rule_figure_fig_a", "rule_figure_fig_b",
                                                       "rule_figure_fig_sign", "rule_prepare_dataset", "rule_train"]
    for jobid, rule in submitted:
        shown = subprocess.run(["scontrol", "show", "job", jobid], env=env, capture_output=True, text=True).stdout
        assert ("TresPerJob=gres:gpu:1" in shown) == (rule == "rule_train"), (rule, shown)
    for run in ("cnn_a", "cnn_b"):
        with h5py.File(work / "results" / "runs" / run / "trajectory.h5", "r") as f:
            assert f.attrs["gpu_lease"] == -1 and f.attrs["gpu_given"] != ""
        assert (work / "results" / "logs" / "train" / f"{run}.log").exists()
