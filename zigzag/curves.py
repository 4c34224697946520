"""Curves over seeds, read from trajectory and analysis files for the curve figures (no matplotlib).

A curve is ``(label, [(trajectory, analysis), ...])``, one pair of files per seed (a kind that reads no
analysis: ``(trajectory,)`` per seed, and the curve has no "mean_mu"). ``load_curve`` reads every seed
and cuts them to their common prefix of steps; its x axis is the epoch, step / batches_per_epoch
(fractional for SGD iterations; the step itself for GD). ``CurveData.mean_sd`` gives the seeds' mean and
sample standard deviation (ddof = 1) that the figures draw as a line and a band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zigzag import store
from zigzag.analysis import adjacent_mu
from zigzag.errors import ZigzagError
from zigzag.scheduleconfig import schedule_setting

Curve = tuple[str, list[tuple[str, ...]]]


def step_unit(traj: store.Trajectory) -> str:
    """What one step of ``traj`` is: an epoch for full-batch GD, an iteration for SGD."""
    return "epoch" if traj.config.get("optimizer", "gd") == "gd" else "iteration"


@dataclass
class CurveData:
    """The seeds of one curve, cut to their common prefix of steps."""

    label: str
    x: np.ndarray                  # epoch of each step: step / batches_per_epoch
    series: dict[str, np.ndarray]  # "mean_mu", "lag1", "loss", "lr": [seeds, steps]
    h: int | None                  # the analyses' window; None for trajectories alone
    schedule_kind: str             # constant | warmup_cosine | gawu
    unit: str                      # the schedule's unit: epoch | iteration
    batches_per_epoch: int
    change_points: list[int | None]  # per seed, in schedule units; None: none
    diverged: int                  # seeds that diverged
    notes: list[str]

    @property
    def n(self) -> int:
        return len(self.change_points)

    def mean_sd(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean over seeds and the sample standard deviation (None for one seed); NaN where any seed is."""
        values = self.series[name]
        if self.n == 1:
            return values[0], None
        return values.mean(axis=0), values.std(axis=0, ddof=1)

    def change_epoch(self, t: int) -> float:
        """A change point in schedule units as an epoch (the x axis)."""
        return t / self.batches_per_epoch if self.unit == "iteration" else float(t)

    def t_text(self, t: int) -> str:
        return f"{t} iterations" if self.unit == "iteration" else str(t)


def load_curve(curve: Curve) -> CurveData:
    """Read every seed of ``curve``; unequal lengths (diverged or unfinished seeds) are cut to the
    common prefix, and the notes say so."""
    label, pairs = curve
    if not pairs:
        raise ZigzagError(f"curve {label!r}: no (trajectory, analysis) files; give one pair per seed")
    trajs, analyses = [], []
    for traj_path, *analysis_paths in pairs:
        traj = store.read_trajectory(traj_path)
        for analysis_path in analysis_paths:
            an = store.read_analysis(analysis_path)
            store.check_analysis_of(traj, traj_path, an, analysis_path)
            if len(an) != len(traj):
                raise ZigzagError(f"{analysis_path}: {len(an)} steps, but its trajectory {traj_path} has "
                                  f"{len(traj)}; re-run `zigzag analyze` on that trajectory")
            analyses.append(an)
        trajs.append(traj)
    bpe = {int(t.attrs.get("batches_per_epoch", 1)) for t in trajs}
    hs = {a.h for a in analyses}
    if len(bpe) > 1 or len(hs) > 1:
        raise ZigzagError(f"curve {label!r}: its seeds differ in batches per epoch ({sorted(bpe)}) or window h "
                          f"({sorted(hs)}); a curve's seeds must share every setting but the seed")
    (bpe,), h = bpe, (hs.pop() if hs else None)
    lengths = [len(t) for t in trajs]
    k = min(lengths)
    schedule = trajs[0].config.get("schedule") or {}
    diverged = [t.diverged_at for t in trajs if t.status == "diverged"]
    notes = []
    if diverged:
        where = ", ".join(map(str, diverged))
        notes.append(f"{label}: {len(diverged)} of {len(trajs)} seeds diverged (at step {where})"
                     if len(trajs) > 1 else f"{label}: diverged at step {where}")
    if len(set(lengths)) > 1:
        notes.append(f"{label}: seeds aligned on their common first {k} steps")
    series = {name: np.stack([t.steps[name][:k] for t in trajs]) for name in ("loss", "lr")}
    if analyses:
        series["mean_mu"] = np.stack([a.mean_mu[:k] for a in analyses])
    series["lag1"] = np.stack([adjacent_mu(t.steps["dot"])[:k] for t in trajs])
    return CurveData(label=label, x=np.arange(k) / bpe, series=series, h=h,
                     schedule_kind=schedule_setting(schedule, "kind"), unit=schedule_setting(schedule, "unit"),
                     batches_per_epoch=bpe, change_points=[store.schedule_change_point(t) for t in trajs],
                     diverged=len(diverged), notes=notes)
