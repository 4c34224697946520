"""The benchmarks' clock: device synchronisation, one timed call, medians and paired ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def make_sync(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA), or does nothing (CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def clock(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds of one call of ``fn``, bracketed by device synchronisation."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], sync: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        clock(fn, sync)
    return statistics.median(clock(fn, sync) for _ in range(repeats))


def paired(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median over repeats of the ratio within each repeat: load drift between repeats cancels."""
    return statistics.median(x / y for x, y in zip(numerators, denominators))


def rotated(items: Sequence, r: int) -> list:
    """``items`` started at position r mod their number: the order of repeat r, so that drift within a repeat
    hits each item alike over the repeats."""
    r %= len(items)
    return [*items[r:], *items[:r]]
