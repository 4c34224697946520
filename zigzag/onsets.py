"""A learning-rate sweep read from its runs' trajectory and analysis files (no matplotlib): per run and seed the
zigzag onset, the edge-of-stability step, the final loss and divergence, and the fit of log onset against log lr.

A point is ``(run name, [(trajectory, analysis) per seed])``, the form of a curve (``zigzag/curves.py``). The
zigzag onset is the analysis's ``zigzag_onset`` (``zigzag.analysis.zigzag_onset``: the first step in the zigzag
phase) and the step of 2/lr its ``eos_step`` (``zigzag.analysis.edge_of_stability_step``), both None where there is
none. ``lambda0`` is the sharpness at step 0 where it was recorded; ``2 / lambda0`` is the catapult boundary.

Fit rule (``fit_slopes``): for each seed, a least-squares line of log onset against log lr over that seed's runs
that zigzag (onset >= 1) and did not diverge; runs that never zigzag are censored and left out; a seed with fewer
than two such lrs has no slope. The slope is reported as the mean and sample standard deviation (ddof = 1) of the
seeds' slopes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zigzag import store
from zigzag.errors import ZigzagError

Point = tuple[str, list[tuple[str, str]]]


@dataclass
class SweepRun:
    """One run of a sweep on one seed."""

    run: str
    lr: float
    seed: int
    onset: int | None        # first zigzag step; None: never zigzags
    eos_step: int | None     # first step where the sharpness reaches 2/lr; None: never or not recorded
    final_loss: float        # the last finite training loss
    diverged: bool
    mean_mu: np.ndarray      # eq. (3) at every step
    lambda0: float           # sharpness at step 0; NaN where not recorded
    smooth_above: float
    zigzag_below: float


def load_sweep(points: list[Point]) -> list[SweepRun]:
    """Every run and seed of a sweep, ordered by lr then seed."""
    if not points:
        raise ZigzagError("sweep: no runs given; give one (name, [(trajectory, analysis) per seed]) per run")
    out = []
    for name, pairs in points:
        for traj_path, analysis_path in pairs:
            traj, an = store.read_trajectory(traj_path), store.read_analysis(analysis_path)
            store.check_analysis_of(traj, traj_path, an, analysis_path)
            if traj.config.get("schedule"):
                raise ZigzagError(f"{traj_path}: run {name!r} has an lr schedule; a sweep's lr axis needs a constant "
                                  "lr")
            loss = traj.steps["loss"][np.isfinite(traj.steps["loss"])]
            sharpness = traj.steps.get("sharpness")
            out.append(SweepRun(
                run=name, lr=float(traj.config["lr"]), seed=int(traj.config["seed"]), onset=an.zigzag_onset,
                eos_step=an.eos_step, final_loss=float(loss[-1]) if len(loss) else math.nan,
                diverged=traj.status == "diverged", mean_mu=an.mean_mu,
                lambda0=float(sharpness[0]) if sharpness is not None and len(sharpness) else math.nan,
                smooth_above=an.smooth_above, zigzag_below=an.zigzag_below))
    return sorted(out, key=lambda r: (r.lr, r.seed, r.run))


def fit_slopes(runs: list[SweepRun]) -> dict[int, float]:
    """Seed -> slope of log onset against log lr (the module's fit rule); seeds without a fit are left out."""
    slopes = {}
    for seed in sorted({r.seed for r in runs}):
        fitted = [r for r in runs if r.seed == seed and r.onset is not None and r.onset >= 1 and not r.diverged]
        if len({r.lr for r in fitted}) >= 2:
            x, y = np.log([r.lr for r in fitted]), np.log([r.onset for r in fitted])
            slopes[seed] = float(np.polyfit(x, y, 1)[0])
    return slopes


def slope_summary(slopes: dict[int, float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, seeds) of the seeds' slopes; NaN where there are too few."""
    values = np.array(list(slopes.values()))
    return (float(values.mean()) if len(values) else math.nan,
            float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values))


def largest_never_zigzag_lr(runs: list[SweepRun]) -> float | None:
    """The largest lr at which no seed zigzags and none diverges; None if every lr does one or the other."""
    lrs = [lr for lr in {r.lr for r in runs}
           if all(r.onset is None and not r.diverged for r in runs if r.lr == lr)]
    return max(lrs) if lrs else None


def smallest_diverged_lr(runs: list[SweepRun]) -> float | None:
    """The smallest lr at which some seed diverges; None if none does."""
    lrs = [r.lr for r in runs if r.diverged]
    return min(lrs) if lrs else None


def catapult_lr(runs: list[SweepRun]) -> float | None:
    """2 / lambda0 with lambda0 the median sharpness at step 0 over the runs that record it; None without."""
    lambdas = [r.lambda0 for r in runs if math.isfinite(r.lambda0) and r.lambda0 > 0]
    return 2.0 / float(np.median(lambdas)) if lambdas else None
