"""GPU leases on a machine with several GPUs, without a GPU: the device list comes from ZIGZAG_GPU_DEVICES."""

import json
import os
import signal
import subprocess
import sys

import h5py
import pytest
from conftest import zigzag_cli, zigzag_main

from zigzag import gpulease

# A job that takes a lease like `zigzag train` does, reports it and holds it for HOLD seconds.
HOLDER = """
import json, sys, time
from zigzag import gpulease
lease = gpulease.lease_for("auto", sys.argv[1])
start = time.time()
print(json.dumps({"index": lease.index}), flush=True)
time.sleep(float(sys.argv[2]))
print(json.dumps({"index": lease.index, "start": start, "end": time.time()}), flush=True)
"""


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Three GPU slots, no scheduler: the environment of a job on a 3-GPU workstation."""
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(gpulease.ENV_DEVICES, "0,1,2")
    return tmp_path / "gpu-locks"


def holder(lock_dir, hold):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), str(hold)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_leases_are_exclusive_and_released(machine):
    leases = [gpulease.lease_for("auto", machine) for _ in range(3)]
    assert [lease.index for lease in leases] == [0, 1, 2]
    assert gpulease.try_acquire(machine, [0, 1, 2]) is None
    leases[1].release()
    again = gpulease.try_acquire(machine, [0, 1, 2])
    assert again.index == 1
    for lease in (leases[0], leases[2], again):
        lease.release()


def test_concurrent_jobs_never_share_a_slot(machine):
    """Seven jobs for three slots: each slot is held by one job at a time, the others wait their turn."""
    jobs = [holder(machine, 0.6) for _ in range(7)]
    spans = [json.loads(job.communicate(timeout=120)[0].splitlines()[-1]) for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    assert sorted({s["index"] for s in spans}) == [0, 1, 2]
    for index in range(3):
        held = sorted((s["start"], s["end"]) for s in spans if s["index"] == index)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(held, held[1:])), held
    # three at a time: the last job could only start after two rounds of holds
    assert max(s["start"] for s in spans) - min(s["start"] for s in spans) >= 2 * 0.6


def test_killed_job_frees_its_slot(machine, monkeypatch):
    monkeypatch.setenv(gpulease.ENV_DEVICES, "1")
    job = holder(machine, 600)
    assert json.loads(job.stdout.readline())["index"] == 1
    assert gpulease.try_acquire(machine, [1]) is None
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    lease = gpulease.try_acquire(machine, [1])
    assert lease is not None and lease.index == 1
    assert (machine / "gpu1.lock").exists()  # the file stays; only the lock went with the process
    lease.release()


def test_given_devices_take_no_lease(machine, monkeypatch):
    assert gpulease.lease_for("cpu", machine) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpulease.lease_for("auto", machine) is None
    assert gpulease.attrs(None) == {"gpu_lease": -1, "gpu_given": "CUDA_VISIBLE_DEVICES=3"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert gpulease.lease_for("cuda", machine) is None
    assert gpulease.given_devices() == "Slurm job 42"
    assert not machine.exists()


@pytest.mark.parametrize("value", ["", "0,x", "1,1", "-1"])
def test_bad_device_list_is_one_error_line(machine, monkeypatch, tiny_dataset, tmp_path, capsys, value):
    monkeypatch.setenv(gpulease.ENV_DEVICES, value)
    result = zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.25", "--lr", "0.1",
                         "--steps", "2", "--lags", "2", "--out", tmp_path / "t.h5", "--gpu-locks", machine, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"zigzag: error: invalid ZIGZAG_GPU_DEVICES={value!r}: expected distinct device indices like 0,1,2"]


def test_trajectory_records_the_leased_index(machine, tiny_dataset, tmp_path):
    """Slot 0 is taken by another job, so `zigzag train` leases slot 1 and says so in the trajectory."""
    machine.mkdir()
    other = gpulease.try_acquire(machine, [0])
    args = ["train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.25", "--lr", "0.1", "--steps", "2",
            "--lags", "2", "--gpu-locks", machine, "--quiet"]
    zigzag_cli(*args, "--out", tmp_path / "leased.h5")
    with h5py.File(tmp_path / "leased.h5", "r") as f:
        assert f.attrs["gpu_lease"] == 1 and f.attrs["gpu_given"] == ""
        assert f.attrs["device"] == "cpu"  # no CUDA here: the slot is held, training runs on the CPU
    other.release()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-m", "zigzag", *map(str, args), "--out", tmp_path / "given.h5"], env=env,
                   check=True, capture_output=True)
    with h5py.File(tmp_path / "given.h5", "r") as f:
        assert f.attrs["gpu_lease"] == -1 and f.attrs["gpu_given"] == "CUDA_VISIBLE_DEVICES="

