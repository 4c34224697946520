"""Which GPU a training job takes on a machine with several: an exclusive lease per device index.

``snakemake --resources gpu=N`` runs up to N training jobs at once but only counts GPUs; it does not
say which one a job should use. So a job that trains on CUDA takes the first free device index i by
an exclusive, non-blocking ``flock`` on ``<lock_dir>/gpu<i>.lock``, holds it while it trains and pins
itself to ``cuda:<i>``. The kernel drops a flock when the process that holds it exits, however it
exits, so the slot of a killed job frees itself; no lock file is ever stale. When every slot is held
the job waits for one.

A job whose devices were chosen for it takes no lease and uses what it was given: ``CUDA_VISIBLE_DEVICES``
is set (by the user, or by Slurm for a job that asked for GPUs), or it runs inside a Slurm job.
``ZIGZAG_GPU_DEVICES=0,2,3`` limits the lease to those indices (default: every visible CUDA device,
leased only when there are at least two); the tests set it to share out slots without a GPU.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zigzag.errors import ZigzagError

ENV_DEVICES = "ZIGZAG_GPU_DEVICES"
POLL_SECONDS = 0.5


@dataclass
class Lease:
    """Slot ``index`` held through the open descriptor ``fd`` of ``path`` (closing it releases the slot)."""

    index: int
    path: Path
    fd: int

    def release(self) -> None:
        os.close(self.fd)


def given_devices() -> str | None:
    """What a scheduler or the user chose for this job (then it takes no lease), else None."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
    if "SLURM_JOB_ID" in os.environ:
        return f"Slurm job {os.environ['SLURM_JOB_ID']}"
    return None


def candidate_devices() -> list[int]:
    """The device indices to share out: ``ZIGZAG_GPU_DEVICES``, else every visible CUDA device."""
    text = os.environ.get(ENV_DEVICES)
    if text is None:
        import torch

        return list(range(torch.cuda.device_count()))
    try:
        devices = [int(part) for part in text.split(",")]
    except ValueError:
        devices = []
    if not devices or min(devices) < 0 or len(set(devices)) != len(devices):
        raise ZigzagError(f"invalid {ENV_DEVICES}={text!r}: expected distinct device indices like 0,1,2")
    return devices


def try_acquire(lock_dir: str | os.PathLike, devices: list[int]) -> Lease | None:
    """The first free slot among ``devices`` (in that order), or None when all are held."""
    for index in devices:
        path = Path(lock_dir) / f"gpu{index}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)  # who holds it, for a person looking at the lock files
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return Lease(index, path, fd)
    return None


def acquire(lock_dir: str | os.PathLike, devices: list[int], poll: float = POLL_SECONDS) -> Lease:
    """A slot among ``devices``, waiting (polling every ``poll`` seconds) while all are held."""
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    said = False
    while (lease := try_acquire(lock_dir, devices)) is None:
        if not said:
            print(f"zigzag: every GPU of {devices} is leased (locks in {lock_dir}); waiting for one", file=sys.stderr)
            said = True
        time.sleep(poll)
    return lease


def lease_for(device: str, lock_dir: str | os.PathLike) -> Lease | None:
    """The lease a job with run setting ``device`` (auto, cpu, cuda) takes, None when it takes none."""
    if device == "cpu" or given_devices() is not None:
        return None
    devices = candidate_devices()
    if len(devices) < 2 and ENV_DEVICES not in os.environ:
        return None  # one GPU or none: nothing to choose
    return acquire(lock_dir, devices)


def attrs(lease: Lease | None) -> dict:
    """Trajectory attributes: the leased index (-1: none) and the devices a scheduler or user gave."""
    return {"gpu_lease": -1 if lease is None else lease.index, "gpu_given": given_devices() or ""}
