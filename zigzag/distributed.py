"""One run across processes: data-parallel full-batch steps with ``torch.distributed`` (launched by torchrun).

A launch is detected from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it a run is
one process and takes none of the code below (``Group`` of size 1: every reduction is the identity, untouched).
With N processes every step's micro-batches (the one-process partition, so BatchNorm's ghost batches stay the
same) are split into N contiguous chunks, rank r taking chunk r; each rank sums its micro-batches' gradients
(each divided by the whole batch's n), one all-reduce of the flat gradient gives every rank g_k, and every rank
takes the same update. Gloo on CPUs, NCCL on CUDA, with a short timeout (``TIMEOUT``) so that a rank that dies
ends the job within a minute. Rank 0 alone writes files and prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from datetime import timedelta

import torch
from torch import nn

from zigzag.errors import ZigzagError

TIMEOUT = timedelta(seconds=60)  # a collective waits this long for a peer before the job ends


class Group:
    """The processes of one run: ``rank`` of ``size``, whose collectives run on ``device`` (with ``nccl``, the
    process's GPU: a tensor elsewhere goes there and back)."""

    def __init__(self, rank: int = 0, size: int = 1, nccl: bool = False):
        self.rank, self.size, self.nccl = rank, size, nccl

    @property
    def device(self) -> torch.device:
        """Where the collectives run: the CPU (gloo), or the current GPU (NCCL; the trainer pins each process to
        its own, ``device.resolve_device``)."""
        return torch.device("cuda", torch.cuda.current_device()) if self.nccl else torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (itself with one process)."""
        if self.distributed:
            moved = tensor.to(self.device)
            torch.distributed.all_reduce(moved)
            if moved is not tensor:
                tensor.copy_(moved)
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank, in place."""
        if self.distributed:
            moved = tensor.to(self.device)
            torch.distributed.broadcast(moved, 0)
            if moved is not tensor:
                tensor.copy_(moved)
        return tensor

    def share(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """The contiguous part [start, stop) of n items that ``rank`` (default: this one) takes: N near-equal
        chunks, the first n mod N one item longer."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(n, self.size)
        start = rank * base + min(rank, extra)
        return start, start + base + (rank < extra)

    def batch_share(self, n: int, micro_batch: int) -> tuple[int, int]:
        """The samples [start, stop) of a batch of n this rank takes: its chunk of the one-process micro-batches
        (samples i * micro_batch ..), so every ghost batch lies in one process."""
        first, last = self.share(-(-n // micro_batch))
        return first * micro_batch, min(last * micro_batch, n)

    def stopped(self, err: BaseException) -> bool:
        """Whether ``err`` stops the run as an interrupt does (saying where a rerun resumes): Ctrl-C or SIGTERM
        (``KeyboardInterrupt``), or a collective that failed because a peer process is gone (gloo raises a
        plain ``RuntimeError`` naming itself)."""
        if isinstance(err, KeyboardInterrupt):
            return True
        lost = isinstance(err, torch.distributed.DistError) or "gloo" in str(err) or "NCCL" in str(err)
        return self.distributed and isinstance(err, RuntimeError) and lost

    def decide(self, value, choices: tuple):
        """Rank 0's ``value`` (one of ``choices``) on every rank: a decision taken from rank 0's files."""
        if not self.distributed:
            return value
        return choices[int(self.broadcast(torch.tensor(choices.index(value))))]

    def gather(self, tensor: torch.Tensor, total: int) -> torch.Tensor:
        """The slices ``tensor`` [..., stop - start] of every rank (``share(total)`` along the last dimension)
        joined into the whole [..., total], on every rank."""
        if not self.distributed:
            return tensor
        width = -(-total // self.size)
        padded = torch.zeros(*tensor.shape[:-1], width, dtype=tensor.dtype, device=self.device)
        padded[..., :tensor.shape[-1]] = tensor
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(pieces, padded)
        return torch.cat([piece[..., :b - a] for piece, (a, b) in
                          zip(pieces, (self.share(total, r) for r in range(self.size)), strict=True)], -1
                         ).to(tensor.device)

    def check_launch(self, what: dict, n_micro_batches: int) -> None:
        """One line, on every rank, before the first step: if some rank would take none of a step's
        ``n_micro_batches`` micro-batches, or the ranks disagree on ``what`` (the settings, the dataset's
        sha256: each rank's hash, all-gathered)."""
        if not self.distributed:
            return
        if self.size > n_micro_batches:
            raise ZigzagError(f"invalid processes={self.size}: a step has only {n_micro_batches} micro-batch(es) to "
                              f"split among them; launch at most {n_micro_batches} processes or lower micro_batch")
        digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).digest()
        mine = torch.tensor(list(digest), dtype=torch.uint8, device=self.device)
        everyone = [torch.empty_like(mine) for _ in range(self.size)]
        torch.distributed.all_gather(everyone, mine)
        differing = [r for r, theirs in enumerate(everyone) if not torch.equal(theirs, everyone[0])]
        if differing:
            raise ZigzagError(f"the {self.size} processes of this launch disagree on the settings or the dataset "
                              f"file (ranks {differing} differ from rank 0); launch them with the same ones")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets its variables)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def join(device_name: str) -> Group:
    """The run's ``Group``: size 1 outside a launch; else, once per process, the process group (NCCL when the run
    trains on CUDA, gloo otherwise) with ``TIMEOUT``. A SIGTERM (torchrun ending the job when a peer died) becomes
    ``KeyboardInterrupt``, so the run says where a rerun resumes."""
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return Group()
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    return Group(torch.distributed.get_rank(), torch.distributed.get_world_size(), cuda)


def gpu_index() -> int | None:
    """The GPU of this process in a launch (``LOCAL_RANK``), else None."""
    return int(os.environ["LOCAL_RANK"]) if launched() and int(os.environ["WORLD_SIZE"]) > 1 else None


class BatchNormStatistics:
    """Running statistics of BatchNorm equal to one process's after every step.

    One process updates a running statistic r once per micro-batch j = 0..m-1 of a step, from the batch
    statistic b_j, with momentum a: r_(j+1) = (1 - a) r_j + a b_j, so after the step

        r_m = (1 - a)^m r_0 + sum_j a (1 - a)^(m-1-j) b_j.

    A rank that takes the micro-batches [s, e) starts them from r = 0 and so ends with
    S = sum_(s<=j<e) a (1 - a)^(e-1-j) b_j; the one-process r_m is then sum over ranks of (1 - a)^(m-e) S, plus
    (1 - a)^m r_0 on rank 0: one all-reduce. ``num_batches_tracked`` adds every rank's count. A cumulative
    average (momentum None) is refused.
    """

    def __init__(self, model: nn.Module, group: Group):
        self.group = group
        self.modules = [m for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        for m in self.modules:
            if m.momentum is None:
                raise ZigzagError("BatchNorm with momentum=None (a cumulative average) cannot be split across "
                                  "processes; train it in one process")
        self._start: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def before(self) -> None:
        """Keep r_0 and start this rank's micro-batches from zero."""
        self._start = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                       for m in self.modules]
        for m in self.modules:
            m.running_mean.zero_()
            m.running_var.zero_()

    def after(self, m_total: int, stop: int) -> None:
        """Combine the ranks' statistics of a step of ``m_total`` micro-batches, this rank's ending at ``stop``."""
        if not self.modules:
            return
        pieces = []
        for m, (mean, var, tracked) in zip(self.modules, self._start, strict=True):
            keep = 1.0 - m.momentum
            for statistic, start in ((m.running_mean, mean), (m.running_var, var)):
                statistic.mul_(keep ** (m_total - stop))
                if self.group.leader:
                    statistic.add_(start * keep ** m_total)
                pieces.append(statistic.reshape(-1))
            pieces.append((m.num_batches_tracked - tracked).to(mean.dtype).reshape(-1))
        flat = self.group.sum(torch.cat(pieces))
        offset = 0
        for m, (_, _, tracked) in zip(self.modules, self._start, strict=True):
            for statistic in (m.running_mean, m.running_var):
                statistic.copy_(flat[offset:offset + statistic.numel()].view_as(statistic))
                offset += statistic.numel()
            m.num_batches_tracked.copy_(tracked + flat[offset].round().long())
            offset += 1
