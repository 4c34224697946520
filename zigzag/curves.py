"""Curves over seeds, read from trajectory and analysis files for the curve figures (no matplotlib).

A curve is ``(label, [(trajectory, analysis), ...])``, one pair of files per seed (a kind that reads no
analysis: ``(trajectory,)`` per seed, and the curve has no "mean_mu"). ``load_curve`` reads every seed
and cuts them to their common prefix of steps; its x axis is the epoch, step / batches_per_epoch
(fractional for SGD iterations; the step itself for GD). ``CurveData.mean_sd`` gives the seeds' mean and
sample standard deviation (ddof = 1) that the figures draw as a line and a band.

``read_divergence`` reads a run and its perturbed twin (``init_perturbation``) from the parameters both recorded
(``/raw/parameters``): their distance and their loss distance per step, and ``growth_rate`` fits how fast the
distance grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
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


# The growth rate of a distance between a run and its perturbed twin, fixed before any result was seen: the
# least-squares slope of ln d_k against k over the steps where it grows: from the step of its smallest positive
# value before its largest to the first step after it where d_k reaches GROWTH_UNTIL of the largest (after that
# the twins are apart and the distance saturates); zero distances are left out of the fit.
GROWTH_UNTIL = 0.1


@dataclass
class Divergence:
    """A run and its perturbed twin, step by step over their common steps with raw parameters."""

    label: str                   # the twin's label
    steps: np.ndarray            # the steps where both recorded theta_k
    parameters: np.ndarray       # |theta_k - theta'_k| (Euclidean, float64)
    loss: np.ndarray             # |loss_k - loss'_k| at those steps
    zigzag_onset: int | None     # the twin's first zigzag step


def _raw_parameters(path: str) -> tuple[np.ndarray, h5py.Dataset]:
    """A trajectory's ``/raw/parameter_steps`` and its open ``/raw/parameters`` (read row by row)."""
    f = store.open_file(path, store.TRAJECTORY)
    if "raw/parameters" not in f:
        f.close()
        raise ZigzagError(f"{path}: no /raw/parameters; train the run and its twin with raw_parameters (e.g. every:1)")
    return store.read_data(f["raw/parameter_steps"]), f["raw/parameters"]


def read_divergence(reference: str, twin: str, label: str, twin_analysis: store.AnalysisFile) -> Divergence:
    """The parameter and loss distance of ``twin`` from ``reference`` (trajectory files recording raw parameters
    of the same model) at the steps both recorded."""
    ref_steps, ref_rows = _raw_parameters(reference)
    twin_steps, twin_rows = _raw_parameters(twin)
    try:
        if ref_rows.shape[1] != twin_rows.shape[1]:
            raise ZigzagError(f"{twin}: {twin_rows.shape[1]} parameters, {reference} {ref_rows.shape[1]}: "
                              f"a twin must be the same model")
        steps, ref_at, twin_at = np.intersect1d(ref_steps, twin_steps, return_indices=True)
        parameters = np.array([np.linalg.norm(store.read_data(ref_rows, i).astype(np.float64)
                                              - store.read_data(twin_rows, j)) for i, j in zip(ref_at, twin_at)])
    finally:
        ref_rows.file.close()
        twin_rows.file.close()
    ref_loss, twin_loss = store.read_trajectory(reference).steps["loss"], store.read_trajectory(twin).steps["loss"]
    inside = steps < min(len(ref_loss), len(twin_loss))
    steps, parameters = steps[inside], parameters[inside]
    return Divergence(label, steps, parameters, np.abs(ref_loss[steps] - twin_loss[steps]), twin_analysis.zigzag_onset)


def growth_rate(steps: np.ndarray, distance: np.ndarray) -> tuple[float, int, int] | None:
    """The slope of ln d_k per step (the rule above ``GROWTH_UNTIL``) and the first and last step of its fit;
    None with fewer than two positive distances there."""
    finite = np.isfinite(distance)
    if not finite.any():
        return None
    largest = int(np.nanargmax(distance))
    positive = finite & (distance > 0)
    if not positive[: largest + 1].any():
        return None
    candidates = np.flatnonzero(positive[: largest + 1])
    start = int(candidates[np.argmin(distance[candidates])])
    end = start + int(np.flatnonzero(distance[start:] >= GROWTH_UNTIL * distance[largest])[0])
    keep = positive[start: end + 1]
    x, y = steps[start: end + 1][keep], np.log(distance[start: end + 1][keep])
    if len(x) < 2:
        return None
    return float(np.polyfit(x, y, 1)[0]), int(x[0]), int(x[-1])
