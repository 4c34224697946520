"""The paper's claims, checked on the runs of this configuration: one row per claim.

Each claim names the runs it reads (config section ``claims``), the paper's value, the value measured
here, and a verdict: ``holds``, ``does not hold`` or ``not run`` (its runs are not configured or did
not finish). Thresholds come from the config, fixed before looking at results, and are printed in the
table beside each verdict. Measured quantities (all from analysis and trajectory files):

- mean_mu: eq. (3) per step; phases from ``analysis.smooth_above`` / ``analysis.zigzag_below``;
- sign flips: ``opposite[k, 1]``, the share of entries whose sign differs between g_{k-1} and g_k;
- zigzag share: the share of the total loss decrease made during zigzag steps;
- batch-size gap: the largest mean |difference| between two batch sizes' mean_mu, per epoch;
- edge of stability: the first step where the sharpness reaches 2/lr versus the zigzag onset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from zigzag import store
from zigzag.analysis import ZIGZAG

HOLDS, FAILS, NOT_RUN = "holds", "does not hold", "not run"
THRESHOLDS = ("early_steps", "smooth_start", "zigzag_strong", "sign_flip", "late_smooth", "late_fraction",
              "loss_share", "batch_gap", "gawu_gap", "eos_gap")  # the keys ``claims_table`` needs


@dataclass
class Run:
    """One finished job: its trajectory and analysis, read once."""

    name: str
    traj: store.Trajectory
    an: dict

    @property
    def mean_mu(self) -> np.ndarray:
        return self.an["mean_mu"]

    @property
    def epoch_mean_mu(self) -> np.ndarray:
        """mean_mu averaged per epoch (SGD: over the epoch's iterations; GD: one step per epoch)."""
        epochs = self.traj.steps["epoch"].astype(int)
        m = self.mean_mu
        return np.array([np.nanmean(m[epochs == e]) if np.isfinite(m[epochs == e]).any() else np.nan
                         for e in range(epochs.max() + 1)])


def _row(claim, paper, measured, runs, verdict, threshold):
    return {"claim": claim, "paper": paper, "measured": measured, "runs": ", ".join(runs),
            "threshold": threshold, "verdict": verdict}


def _not_run(claim, paper, threshold, runs=()):
    return _row(claim, paper, "-", list(runs), NOT_RUN, threshold)


def smooth_then_zigzag(run: Run | None, t: dict) -> dict:
    claim, paper = "CNN starts smooth, then turns zigzag", "mean_mu > 0 in the first 10 epochs, then near -0.9"
    threshold = (f"mean of mean_mu over the first {t['early_steps']} steps > {t['smooth_start']}; "
                 f"min mean_mu later < {t['zigzag_strong']}")
    if run is None:
        return _not_run(claim, paper, threshold)
    early = float(np.nanmean(run.mean_mu[: t["early_steps"]]))
    later = float(np.nanmin(run.mean_mu[t["early_steps"]:]))
    ok = early > t["smooth_start"] and later < t["zigzag_strong"]
    return _row(claim, paper, f"first {t['early_steps']}: {early:+.2f}; later min {later:+.2f}", [run.name],
                HOLDS if ok else FAILS, threshold)


def sign_flips(runs: list[Run], t: dict) -> dict:
    claim, paper = "about 90% of entries flip sign in the zigzag phase", "~90% (adjacent correlation -0.9)"
    threshold = f"median share of opposite signs between adjacent gradients over zigzag steps >= {t['sign_flip']}"
    shares = {}
    for run in runs:
        zig = run.an["phase"] == ZIGZAG
        if zig.any():
            shares[run.name] = float(np.nanmedian(run.traj.steps["opposite"][zig, 1]))
    if not shares:
        return _not_run(claim, paper, threshold, [r.name for r in runs])
    ok = all(v >= t["sign_flip"] for v in shares.values())
    measured = "; ".join(f"{name} {100 * v:.0f}%" for name, v in shares.items())
    return _row(claim, paper, measured, list(shares), HOLDS if ok else FAILS, threshold)


def zigzag_then_smooth(run: Run | None, t: dict) -> dict:
    claim, paper = "ResNet starts zigzag, then turns smooth (near +1) late", "negative first 120 epochs, then ~+1"
    threshold = (f"min mean_mu in the first half < {t['zigzag_strong']}; mean over the last "
                 f"{t['late_fraction']:.0%} of defined steps > {t['late_smooth']}")
    if run is None:
        return _not_run(claim, paper, threshold)
    m = run.mean_mu[np.isfinite(run.mean_mu)]
    first = float(np.min(m[: len(m) // 2]))
    late = float(np.mean(m[-max(1, int(len(m) * t["late_fraction"])):]))
    ok = first < t["zigzag_strong"] and late > t["late_smooth"]
    return _row(claim, paper, f"first-half min {first:+.2f}; late mean {late:+.2f}", [run.name],
                HOLDS if ok else FAILS, threshold)


def small_lr_zigzag(runs: list[Run], t: dict) -> dict:
    claim, paper = "zigzag still appears at small learning rates", "VGG-16 lr 0.01, ResNet-18 lr 0.001: zigzag"
    threshold = f"every small-lr run has a step with mean_mu < {t['zigzag_strong']}"
    if not runs:
        return _not_run(claim, paper, threshold)
    minima = {r.name: float(np.nanmin(r.mean_mu)) for r in runs}
    ok = all(v < t["zigzag_strong"] for v in minima.values())
    return _row(claim, paper, "; ".join(f"{n} min {v:+.2f}" for n, v in minima.items()), list(minima),
                HOLDS if ok else FAILS, threshold)


def loss_share(runs: list[Run], t: dict) -> dict:
    claim, paper = "a substantial part of the loss decrease happens in the zigzag phase", "substantial, all runs"
    threshold = f"zigzag share of the loss decrease >= {t['loss_share']} in every run"
    if not runs:
        return _not_run(claim, paper, threshold)
    shares = {r.name: float(r.an["attrs"]["zigzag_loss_share"]) for r in runs}
    ok = all(np.isfinite(v) and v >= t["loss_share"] for v in shares.values())
    return _row(claim, paper, "; ".join(f"{n} {v:.2f}" for n, v in shares.items()), list(shares),
                HOLDS if ok else FAILS, threshold)


def batch_sizes_similar(runs: list[Run], t: dict) -> dict:
    claim, paper = "mean correlation curves barely change with the batch size (Fig. 9)", "similar curves"
    threshold = f"largest mean |difference| of per-epoch mean_mu between two batch sizes <= {t['batch_gap']}"
    if len(runs) < 2:
        return _not_run(claim, paper, threshold, [r.name for r in runs])
    curves = [r.epoch_mean_mu for r in runs]
    n = min(len(c) for c in curves)
    gaps = [np.nanmean(np.abs(a[:n] - b[:n])) for i, a in enumerate(curves) for b in curves[i + 1:]]
    gap = float(np.nanmax(gaps))
    return _row(claim, paper, f"largest gap {gap:.2f}", [r.name for r in runs],
                HOLDS if gap <= t["batch_gap"] else FAILS, threshold)


def gawu_close_to_best_wu(gawu: list[Run], wu: list[list[Run]], t: dict) -> dict:
    claim, paper = "the GAWU change point is close to the best WU change point (Table 1)", "GAWU t = 11, best WU t = 12"
    threshold = f"|mean GAWU t - t of the WU run with the best mean final test accuracy| <= {t['gawu_gap']} epochs"
    detected = [r.traj.attrs.get("change_point", -1) for r in gawu]
    if not gawu or not wu or min(detected, default=-1) < 0:
        return _not_run(claim, paper, threshold, [r.name for r in gawu])

    def final_accuracy(run):
        acc = run.traj.steps["test_accuracy"]
        return acc[np.isfinite(acc)][-1] if np.isfinite(acc).any() else np.nan

    scored = [(np.nanmean([final_accuracy(r) for r in seeds]), seeds[0].traj.attrs["change_point"], seeds[0].name)
              for seeds in wu]
    best_accuracy, best_t, best_name = max(scored)
    gawu_t = float(np.mean(detected))
    ok = abs(gawu_t - best_t) <= t["gawu_gap"]
    return _row(claim, paper, f"GAWU t = {gawu_t:g}; best WU t = {best_t} ({100 * best_accuracy:.1f}%)",
                [gawu[0].name, best_name], HOLDS if ok else FAILS, threshold)


def onset_at_edge_of_stability(runs: list[Run], t: dict) -> dict:
    claim = "zigzag onset coincides with the sharpness reaching 2/lr (edge of stability; not in the paper)"
    paper = "not measured in the paper"
    threshold = (f"|zigzag onset - first step with sharpness >= (1 - tol) 2/lr| <= {t['eos_gap']} steps "
                 f"in every run that reaches both")
    if not runs:
        return _not_run(claim, paper, threshold)
    parts, ok, seen = [], True, False
    for r in runs:
        onset, eos = r.an["attrs"]["zigzag_onset"], r.an["attrs"]["eos_step"]
        parts.append(f"{r.name}: onset {onset if onset >= 0 else 'none'}, 2/lr at {eos if eos >= 0 else 'never'}")
        if onset >= 0 and eos >= 0:
            seen = True
            ok &= abs(onset - eos) <= t["eos_gap"]
        elif onset >= 0 or eos >= 0:
            ok = False
    verdict = (HOLDS if ok else FAILS) if seen or not ok else NOT_RUN
    return _row(claim, paper, "; ".join(parts), [r.name for r in runs], verdict, threshold)


def claims_table(groups: dict[str, list[list[tuple[str, str, str]]]], thresholds: dict) -> pd.DataFrame:
    """``groups``: claim group -> runs -> seeds as (job name, trajectory, analysis); missing group = not run.

    A job that did not complete (running or diverged) is left out of the claims that read it.
    """
    def load(seeds):
        runs = [Run(name, store.read_trajectory(tp), store.read_analysis(ap)) for name, tp, ap in seeds]
        for run, (_, tp, ap) in zip(runs, seeds):
            store.check_analysis_of(run.traj, tp, run.an, ap)
        return [r for r in runs if r.traj.status == "completed"]

    loaded = {key: [load(seeds) for seeds in runs] for key, runs in groups.items()}

    def first(key):  # the first seed of the first run of a group, or None
        return next((seeds[0] for seeds in loaded.get(key, []) if seeds), None)

    def firsts(key):  # the first seed of every run of a group
        return [seeds[0] for seeds in loaded.get(key, []) if seeds]

    t = thresholds
    rows = [
        smooth_then_zigzag(first("cnn"), t),
        sign_flips(firsts("cnn") + firsts("sign_flips"), t),
        zigzag_then_smooth(first("resnet"), t),
        small_lr_zigzag(firsts("small_lr"), t),
        loss_share(firsts("loss_share"), t),
        batch_sizes_similar(firsts("batch_sizes"), t),
        gawu_close_to_best_wu(next(iter(loaded.get("gawu", [])), []), [s for s in loaded.get("wu", []) if s], t),
        onset_at_edge_of_stability(firsts("sharpness"), t),
    ]
    return pd.DataFrame(rows, columns=["claim", "paper", "measured", "runs", "threshold", "verdict"])
