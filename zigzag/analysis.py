"""From lag statistics to the paper's quantities: mu, window matrices, mean_mu, phases, loss share.

Everything here is exact arithmetic on ``dot[k, l] = <g_k, g_{k-l}>`` and
``opposite[k, l] = s(k, k-l)`` (docs/design.md, "Lag statistics, and why they are sufficient"), so it
needs no gradients:

    mu(j, k)      = dot[k, k-j] / sqrt(dot[j, 0] dot[k, 0])                     (eq. 2), |k - j| <= L
    M_k[a, b]     = mu(k+a, k+b),  a, b = 0..h-1                               (the h x h window)
    mean_mu_k     = 1/(h-1) sum_{m=1..h-1} mu(k+m-1, k+m)                      (eq. 3; NaN for k > K-h)

The phase of step k is that of mean_mu_k, the mean over exactly the adjacent pairs inside the window
[k, k+h-1]: a window "lies in" a phase when the phase of its first step k is that phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zigzag.analysisconfig import AnalysisConfig
from zigzag.scheduleconfig import gawu_switches, schedule_setting

SMOOTH, ZIGZAG, RANDOM, UNDEFINED = 0, 1, 2, -1
PHASE_NAMES = {SMOOTH: "smooth", ZIGZAG: "zigzag", RANDOM: "random", UNDEFINED: "undefined"}


def adjacent_mu(dot: np.ndarray) -> np.ndarray:
    """mu(k-1, k) for every step k (NaN at k = 0)."""
    norms_sq = dot[:, 0]
    out = np.full(len(dot), np.nan)
    out[1:] = dot[1:, 1] / np.sqrt(norms_sq[1:] * norms_sq[:-1])
    return out


def mean_mu(dot: np.ndarray, h: int) -> np.ndarray:
    """Eq. (3): the window starts at step k and looks forward; NaN for the last h-1 steps.

    Each window is summed on its own (not as a difference of running sums), so a NaN correlation
    (e.g. an exactly zero gradient) makes NaN only the windows that contain it.
    """
    adjacent = adjacent_mu(dot)
    out = np.full(len(dot), np.nan)
    if len(dot) >= h:
        # windows[k] = adjacent[k+1 .. k+h-1] = mu(k+m-1, k+m) for m = 1..h-1
        windows = np.lib.stride_tricks.sliding_window_view(adjacent[1:], h - 1)
        out[: len(windows)] = windows.sum(axis=1) / (h - 1)
    return out


def window(lag_matrix: np.ndarray, k: int, h: int, normalise: bool) -> np.ndarray:
    """The h x h matrix at step k: mu(k+a, k+b) (``normalise``, from dot) or s(k+a, k+b) (from opposite).

    NaN-filled where the window runs past the recorded steps (e.g. a diverged run).
    """
    if h > lag_matrix.shape[1]:
        raise ValueError(f"window h={h} needs lags >= {h - 1}, the trajectory has {lag_matrix.shape[1] - 1}")
    out = np.full((h, h), np.nan)
    if k < 0 or k + h > len(lag_matrix):
        return out
    for a in range(h):
        for b in range(a, h):
            value = lag_matrix[k + b, b - a]
            if normalise:
                value = value / np.sqrt(lag_matrix[k + a, 0] * lag_matrix[k + b, 0])
            out[a, b] = out[b, a] = value
    return out


def phases(mean_mu_k: np.ndarray, smooth_above: float, zigzag_below: float) -> np.ndarray:
    """Phase per step (int8): smooth if mean_mu > smooth_above, zigzag if < zigzag_below, else random."""
    out = np.full(len(mean_mu_k), RANDOM, dtype=np.int8)
    out[mean_mu_k > smooth_above] = SMOOTH
    out[mean_mu_k < zigzag_below] = ZIGZAG
    out[np.isnan(mean_mu_k)] = UNDEFINED
    return out


def transitions(phase: np.ndarray) -> list[tuple[int, str, str]]:
    """(step, from, to) wherever the defined phase changes."""
    out, previous = [], None
    for k, p in enumerate(phase):
        if p == UNDEFINED:
            continue
        if previous is not None and p != previous:
            out.append((k, PHASE_NAMES[int(previous)], PHASE_NAMES[int(p)]))
        previous = p
    return out


def zigzag_loss_share(loss: np.ndarray, phase: np.ndarray) -> float:
    """Share of the total loss decrease made during zigzag steps.

    sum over zigzag steps k of (loss_k - loss_{k+1}), divided by loss_0 - loss_{K-1}; the update of
    step k is credited to the phase of step k. NaN if the loss did not decrease overall.
    """
    if len(loss) < 2:
        return float("nan")
    total = loss[0] - loss[-1]
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    decrease = loss[:-1] - loss[1:]
    in_zigzag = phase[:-1] == ZIGZAG
    return float(np.nansum(decrease[in_zigzag]) / total)


def online_change_point(adjacent: np.ndarray, h: int, steps_per_unit: int = 1,
                        max_warmup: int | None = None) -> int | None:
    """The unit t where GAWU switches (``zigzag.schedules.GAWU`` as the trainer feeds it): the same rule,
    ``zigzag.scheduleconfig.gawu_switches``.

    The monitor gets one adjacent cosine mu(k-1, k) per step; at the end of unit u, i.e. after step
    k = (u + 1) * steps_per_unit - 1, the scheduler reads the mean of the last h - 1 cosines,
    1/(h-1) sum_{m=1..h-1} mu(k-h+m, k-h+m+1) = mean_mu_{k-h+1} (eq. 3, the window ending at k; NaN
    while k < h - 1 or if a cosine in it is NaN). t is the first unit u whose mean is < 0 after some
    earlier unit's mean was > 0 (NaN and 0 neither arm nor trigger), or u = max_warmup; None if neither.
    Unit t is the one run at the peak lr: its first step is t * steps_per_unit.
    """
    seen_positive = False
    for u in range(len(adjacent) // steps_per_unit):
        k = (u + 1) * steps_per_unit - 1
        m = float(np.mean(adjacent[k - h + 2:k + 1])) if k >= h - 1 else np.nan
        switch, seen_positive = gawu_switches(m, seen_positive, u, max_warmup)
        if switch:
            return u
    return None


def change_point_rule(schedule: dict, batches_per_epoch: int) -> dict:
    """GAWU's switch settings for a run with this ``schedule`` (its own for a GAWU run, GAWU's defaults
    otherwise, ``zigzag.scheduleconfig.SCHEDULE``): window ``h``, ``unit`` as ``steps_per_unit``, ``max_warmup``."""
    unit = schedule_setting(schedule, "unit")
    return {"h": int(schedule_setting(schedule, "h")), "unit": unit,
            "steps_per_unit": int(batches_per_epoch) if unit == "epoch" else 1,
            "max_warmup": schedule.get("max_warmup") if schedule.get("kind") == "gawu" else None}


def zigzag_onset(phase: np.ndarray) -> int | None:
    """First step in the zigzag phase, or None."""
    steps = np.flatnonzero(phase == ZIGZAG)
    return int(steps[0]) if len(steps) else None


def edge_of_stability_step(sharpness: np.ndarray, lr: np.ndarray, tolerance: float) -> int | None:
    """First step where the sharpness reaches 2/lr: lambda_max(k) >= (1 - tolerance) * 2 / lr_k.

    Steps where the sharpness was not computed (NaN) are skipped; None if it never does.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        reached = sharpness >= (1.0 - tolerance) * 2.0 / lr
    steps = np.flatnonzero(reached)
    return int(steps[0]) if len(steps) else None


def auto_windows(mean_mu_k: np.ndarray, phase: np.ndarray) -> dict[str, int]:
    """The windows a figure shows, found in the run itself (``steps: auto``): role -> first step k.

    - ``zigzag``: the deepest zigzag step, argmin_k mean_mu_k over the zigzag steps (the earliest on a tie);
    - ``smooth``: the middle step of the longest run of consecutive smooth steps that ends before the
      zigzag step (the smooth phase that precedes the zigzag, as in a CNN); if there is none (a run that
      zigzags first, as a ResNet, or never zigzags), of the longest run overall; the earliest on a tie;
    - ``late``: the last step with a defined mean_mu (K - h for a finished run).

    A role is missing when the run has no step of that phase (no defined step at all: no ``late``).
    """
    roles = {}
    zigzag = np.flatnonzero(phase == ZIGZAG)
    if len(zigzag):
        roles["zigzag"] = int(zigzag[np.argmin(mean_mu_k[zigzag])])
    smooth = [(len(run), -start, start + (len(run) - 1) // 2) for start, run in _runs(phase == SMOOTH)]
    before = [r for r in smooth if "zigzag" in roles and -r[1] + r[0] <= roles["zigzag"]]  # start + length
    if smooth:
        roles["smooth"] = max(before or smooth)[2]
    defined = np.flatnonzero(np.isfinite(mean_mu_k))
    if len(defined):
        roles["late"] = int(defined[-1])
    return roles


def _runs(mask: np.ndarray) -> list[tuple[int, range]]:
    """(start, steps) of each maximal run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return [(int(a), range(a, b)) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


@dataclass
class Analysis:
    """What ``analysis.h5`` holds for one run: each field is kept as ``store.ANALYSIS_FIELDS`` says (docs/formats.md,
    "zigzag-analysis"), which also adds the fields copied from the trajectory."""

    h: int
    smooth_above: float
    zigzag_below: float
    adjacent_mu: np.ndarray
    mean_mu: np.ndarray
    phase: np.ndarray
    window_steps: np.ndarray
    window_roles: list[str]  # per window: the auto_windows roles it was chosen for ("" if only asked for)
    window_corr: np.ndarray
    window_opposite: np.ndarray
    window_opposite_nonzero: np.ndarray  # all NaN where the trajectory lacks /steps/opposite_nonzero
    window_opposite_weight: np.ndarray   # all NaN where it lacks /steps/opposite_weight
    zigzag_loss_share: float
    transitions: list
    change_point_step: int | None   # first step of the change-point unit (t * steps per unit)
    change_point_epoch: int | None  # the epoch that step lies in
    change_point_rule: dict         # change_point_rule(): h, unit, steps_per_unit, max_warmup
    zigzag_onset: int | None
    eos_step: int | None
    eos_tolerance: float


def analyze(steps: dict[str, np.ndarray], h: int, window_steps: list[int], smooth_above: float,
            zigzag_below: float, eos_tolerance: float = AnalysisConfig.eos_tolerance, schedule: dict | None = None,
            batches_per_epoch: int = 1, auto: bool = False) -> Analysis:
    """All the analysis of one trajectory's ``/steps`` series (``eos_step`` needs ``/steps/sharpness``);
    ``schedule`` and ``batches_per_epoch`` (the trajectory's) set the GAWU change point's rule.

    The windows are ``window_steps`` and, with ``auto``, those ``auto_windows`` chooses.
    """
    dot, opposite = steps["dot"], steps["opposite"]
    m = mean_mu(dot, h)
    rule = change_point_rule(schedule or {}, batches_per_epoch)
    t = online_change_point(adjacent_mu(dot), rule["h"], rule["steps_per_unit"], rule["max_warmup"])
    t_step = None if t is None else t * rule["steps_per_unit"]
    phase = phases(m, smooth_above, zigzag_below)
    chosen = auto_windows(m, phase) if auto else {}
    ws = np.asarray(sorted(set(window_steps) | set(chosen.values())), dtype=np.int64)
    roles = [", ".join(role for role, k in chosen.items() if k == step) for step in ws]

    def windows(lag_matrix, normalise):  # the h x h matrix of every window kept
        return np.stack([window(lag_matrix, k, h, normalise) for k in ws]) if len(ws) else np.zeros((0, h, h))

    return Analysis(
        h=h, smooth_above=smooth_above, zigzag_below=zigzag_below,
        adjacent_mu=adjacent_mu(dot), mean_mu=m, phase=phase, window_steps=ws, window_roles=roles,
        window_corr=windows(dot, True),
        window_opposite=windows(opposite, False),
        window_opposite_nonzero=windows(steps.get("opposite_nonzero", np.full_like(dot, np.nan)), False),
        window_opposite_weight=windows(steps.get("opposite_weight", np.full_like(dot, np.nan)), False),
        zigzag_loss_share=zigzag_loss_share(steps["loss"], phase),
        transitions=transitions(phase),
        change_point_step=t_step,
        change_point_epoch=None if t_step is None else t_step // batches_per_epoch,
        change_point_rule=rule,
        zigzag_onset=zigzag_onset(phase),
        eos_step=edge_of_stability_step(steps["sharpness"], steps["lr"], eos_tolerance)
        if "sharpness" in steps else None,
        eos_tolerance=eos_tolerance,
    )
