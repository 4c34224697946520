"""The paper's claims, checked on every configured seed of the runs of this configuration.

Each claim names the runs it reads (config section ``claims``) and is judged on each seed of
``claims.seeds`` on its own: the seed-s jobs of those runs give a measured value and a verdict
``holds``, ``does not hold`` or ``not run`` (its runs are not configured, did not finish, or never
reach the phase the claim is about). The overall verdict combines the seeds by the rule
``claims.overall``, fixed in the config before any result is seen (``overall_verdict``):

- ``every_seed``: holds if it holds on every configured seed, does not hold if it holds on none
  (and was judged on one at least), not run if judged on none, else ``mixed``;
- ``majority``: holds if it holds on more than half of the configured seeds, does not hold if it fails
  on more than half, not run if judged on none, else ``mixed``.

Thresholds come from the config, fixed before looking at results, and are printed in the table beside
each verdict. Measured quantities (all from analysis and trajectory files):

- mean_mu: eq. (3) per step; phases from ``analysis.smooth_above`` / ``analysis.zigzag_below``;
- sign flips: for each zigzag step k (its window [k, k+h-1] has mean_mu_k < zigzag_below) the adjacent
  pairs inside the window, ``opposite[k+m, 1]`` for m = 1..h-1 (the share of entries whose sign differs
  between g_{k+m-1} and g_{k+m}); the median over every such pair of a run; a run with no zigzag step is
  named in the measured column; the same with ``opposite_nonzero`` (among the entries non-zero in both) and
  ``opposite_weight`` (the share of the overlap sum_i |g_{k+m-1}[i] g_{k+m}[i]| the flipped entries carry),
  each a row of its own with its own threshold; a run whose trajectory predates these is named, not judged;
- zigzag share: the share of the total loss decrease made during zigzag steps;
- batch-size gap: the largest mean |difference| between two batch sizes' mean_mu, per epoch;
- GAWU (Table 1): GAWU switched (a seed that never switched does not hold), its change point t within
  ``gawu_gap`` of the t of the WU run with the best mean final test accuracy over the seeds, and its
  final test accuracy at least that WU run's mean minus ``gawu_accuracy_sds`` sample standard
  deviations of that run's seeds (comparable within the seeds' spread);
- edge of stability: the first step where the sharpness reaches 2/lr versus the zigzag onset.

Each verdict comes with its margin (``margin``): every measured value the verdict compares, against its
threshold, and the room it leaves, signed: positive on the side where the claim holds, negative where it fails
(``_margin``). Where a claim needs every run of a group, the margin is that of the tightest run, the one the
verdict turns on. A verdict with a small margin may turn on another machine (full-batch GD at the edge of
stability amplifies last-bit differences; README, "Claims").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from zigzag import store
from zigzag.analysis import ZIGZAG
from zigzag.errors import ZigzagError
from zigzag.settings import MAX_STEPS, Spec

HOLDS, FAILS, NOT_RUN, MIXED = "holds", "does not hold", "not run", "mixed"
OVERALL_RULES = ("every_seed", "majority")
COLUMNS = ["claim", "paper", "measured", "runs", "threshold", "margin", "verdict"]
# The claim groups (config ``claims.<group>``: the runs a claim reads), declared once: ``claims_table`` reads them,
# and the ``claims`` section of the workflow's config (zigzag.configcheck.load_schema) and its plan
# (zigzag.pipeline.claim_groups) come from them.
GROUPS = {
    "cnn": "CNN lr 0.1 (smooth then zigzag)",
    "resnet": "ResNet lr 0.1 (zigzag then smooth)",
    "sign_flips": "further runs whose zigzag sign flips count",
    "small_lr": "runs at a small lr that zigzag all the same",
    "loss_share": "runs whose zigzag share of the loss decrease counts",
    "batch_sizes": "SGD runs at several batch sizes (similar mean_mu curves)",
    "gawu": "the GAWU run (Table 1)",
    "wu": "the warm-up runs GAWU is compared with (Table 1)",
    "sharpness": "runs recording sharpness (zigzag onset at the edge of stability)",
}
# The thresholds ``claims_table`` needs, declared once: the check below and the ``claims.thresholds`` section of
# the workflow's config (zigzag.configcheck.load_schema) come from them. Every one is a finite number.
THRESHOLDS = {
    "early_steps": Spec("steps that count as the start of training (fewer than the cnn run's steps)", "int", 10,
                        low=1, high=MAX_STEPS),
    "smooth_start": Spec("mean of mean_mu over the early steps above this: starts smooth", "float", 0.5),
    "zigzag_strong": Spec("mean_mu below this: strongly negative (zigzag)", "float", -0.5),
    "sign_flip": Spec("median share of flipped signs in zigzag steps (paper ~0.9)", "float", 0.8),
    "sign_flip_nonzero": Spec("the same, counted among the entries non-zero in both gradients (paper ~0.9)", "float",
                              0.8),
    "sign_flip_weight": Spec("the same, as the share of the overlap sum_i |g[i] g'[i]| the flipped entries carry "
                             "(paper ~0.9)", "float", 0.8),
    "late_smooth": Spec("late mean of mean_mu above this: near +1", "float", 0.9),
    "late_fraction": Spec("the last part of a run that counts as late", "float", 0.1, low=0, low_open=True, high=1),
    "loss_share": Spec("zigzag share of the loss decrease that counts as substantial", "float", 0.25),
    "batch_gap": Spec("largest mean |difference| of batch-size curves that counts as similar", "float", 0.3),
    "gawu_gap": Spec("schedule units between GAWU t and the best WU t that count as close", "float", 2),
    "gawu_accuracy_sds": Spec("GAWU's final test accuracy may lie this many sample sds (over seeds) of the best WU "
                              "run below its mean", "float", 1, low=0),
    "eos_gap": Spec("steps between zigzag onset and sharpness at 2/lr that count as coinciding", "int", 10, low=0),
}


def check_thresholds(thresholds: dict) -> None:
    """One ``ZigzagError`` line unless every threshold is given and valid (NaN, inf, ``true`` or 1e12 early
    steps are refused, never compared)."""
    missing = [key for key in THRESHOLDS if key not in thresholds]
    if missing:
        raise ZigzagError(f"claims thresholds: missing {', '.join(missing)}")
    for key, spec in THRESHOLDS.items():
        spec.check(f"claims threshold {key}", thresholds[key])


@dataclass
class Run:
    """One finished job: its trajectory and analysis, read once."""

    name: str
    traj: store.Trajectory
    an: store.AnalysisFile

    @property
    def mean_mu(self) -> np.ndarray:
        return self.an.mean_mu

    @property
    def epoch_mean_mu(self) -> np.ndarray:
        """mean_mu averaged per epoch (SGD: over the epoch's iterations; GD: one step per epoch)."""
        epochs = self.traj.steps["epoch"].astype(int)
        m = self.mean_mu
        return np.array([np.nanmean(m[epochs == e]) if np.isfinite(m[epochs == e]).any() else np.nan
                         for e in range(epochs.max() + 1)])


def _row(claim, paper, measured, runs, verdict, threshold, never_switched=False, margin="-"):
    return {"claim": claim, "paper": paper, "measured": measured, "runs": ", ".join(runs),
            "threshold": threshold, "verdict": verdict, "never_switched": never_switched, "margin": margin}


def _spare(value: float, limit: float, above: bool) -> float:
    """The room ``value`` leaves against ``limit``: positive on the holding side (above it if ``above``)."""
    return value - limit if above else limit - value


def _margin(name: str, value: float, limit: float, above: bool, digits: int = 2) -> str:
    """``name value against limit: +room`` (``_spare``; a strict threshold fails at 0)."""
    return f"{name} {value:.{digits}f} against {limit:g}: {_spare(value, limit, above):+.{digits}f}"


def _tightest(values: dict[str, float], limit: float, above: bool, what: str, digits: int = 2) -> str:
    """The margin of the run with the least room (a NaN counts as none), named."""
    name = min(values, key=lambda n: _spare(values[n], limit, above) if np.isfinite(values[n]) else -np.inf)
    return f"tightest {name}: " + _margin(what, values[name], limit, above, digits)


def _not_run(claim, paper, threshold, runs=()):
    return _row(claim, paper, "-", list(runs), NOT_RUN, threshold)


def smooth_then_zigzag(run: Run | None, t: dict) -> dict:
    claim, paper = "CNN starts smooth, then turns zigzag", "mean_mu > 0 in the first 10 epochs, then near -0.9"
    threshold = (f"mean of mean_mu over the first {t['early_steps']} steps > {t['smooth_start']}; "
                 f"min mean_mu later < {t['zigzag_strong']}")
    if run is None:
        return _not_run(claim, paper, threshold)
    if t["early_steps"] >= len(run.mean_mu):
        raise ZigzagError(f"claims threshold early_steps={t['early_steps']}: {run.name} has {len(run.mean_mu)} steps, "
                          f"so no step comes later; lower early_steps below {len(run.mean_mu)}")
    early = float(np.nanmean(run.mean_mu[: t["early_steps"]]))
    later = float(np.nanmin(run.mean_mu[t["early_steps"]:]))
    ok = early > t["smooth_start"] and later < t["zigzag_strong"]
    margin = (f"{_margin('early mean', early, t['smooth_start'], True)}; "
              f"{_margin('later min', later, t['zigzag_strong'], False)}")
    return _row(claim, paper, f"first {t['early_steps']}: {early:+.2f}; later min {later:+.2f}", [run.name],
                HOLDS if ok else FAILS, threshold, margin=margin)


def window_pair_steps(phase: np.ndarray, h: int) -> np.ndarray:
    """Steps j whose adjacent pair (j-1, j) lies inside a zigzag window [k, k+h-1]: j = k+m, m = 1..h-1."""
    starts = np.flatnonzero(phase == ZIGZAG)
    return np.unique((starts[:, None] + np.arange(1, h)[None, :]).ravel())


def _zigzag_median_shares(runs: list[Run], series: str, at_least: float) -> tuple[str, str, str]:
    """The measured column, verdict and margin of a sign-flip count: the median of ``/steps/<series>`` at lag 1 over the
    adjacent pairs inside a run's zigzag windows, at least ``at_least`` in every run with a zigzag step; a run
    with none, or whose trajectory predates ``series`` (or holds only NaN there), is named and not judged."""
    shares, parts = {}, []
    for run in runs:
        steps = window_pair_steps(run.an.phase, run.an.h)
        values = run.traj.steps[series][steps, 1] if series in run.traj.steps else np.array([np.nan])
        if not len(steps):
            parts.append(f"{run.name} no zigzag step")
        elif not np.isfinite(values).any():
            parts.append(f"{run.name} not recorded")
        else:
            shares[run.name] = float(np.nanmedian(values))
            parts.append(f"{run.name} {100 * shares[run.name]:.0f}%")
    verdict = NOT_RUN if not shares else HOLDS if all(v >= at_least for v in shares.values()) else FAILS
    margin = _tightest(shares, at_least, True, "median share") if shares else "-"
    return "; ".join(parts), verdict, margin


# The sign-flip claims, one per count of flipped entries: (series of the trajectory, threshold key, claim, paper,
# what the median is of). The first is the paper's wording (a share of all entries).
SIGN_FLIP_COUNTS = (
    ("opposite", "sign_flip", "about 90% of entries flip sign in the zigzag phase", "~90% (adjacent correlation -0.9)",
     "share of opposite signs between adjacent gradients"),
    ("opposite_nonzero", "sign_flip_nonzero", "about 90% of the entries non-zero in both flip sign in the zigzag phase",
     "~90% (adjacent correlation -0.9)",
     "share of opposite signs among the entries non-zero in both adjacent gradients"),
    ("opposite_weight", "sign_flip_weight",
     "the flipped entries carry about 90% of the adjacent gradients' overlap in the zigzag phase",
     "~90% of entries (adjacent correlation -0.9)", "share of the overlap sum_i |g_(k-1)[i] g_k[i]| carried by "
     "entries of opposite signs, adjacent gradients"),
)


def sign_flips(runs: list[Run], t: dict) -> list[dict]:
    """One row per count of ``SIGN_FLIP_COUNTS``: its median over the adjacent pairs inside the zigzag windows, at
    least its threshold in every run with a zigzag step."""
    rows = []
    for series, key, claim, paper, what in SIGN_FLIP_COUNTS:
        threshold = f"median {what} inside the zigzag windows >= {t[key]} in every run with a zigzag step"
        if not runs:
            rows.append(_not_run(claim, paper, threshold))
            continue
        measured, verdict, margin = _zigzag_median_shares(runs, series, t[key])
        rows.append(_row(claim, paper, measured, [r.name for r in runs], verdict, threshold, margin=margin))
    return rows


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
    margin = (f"{_margin('first-half min', first, t['zigzag_strong'], False)}; "
              f"{_margin('late mean', late, t['late_smooth'], True)}")
    return _row(claim, paper, f"first-half min {first:+.2f}; late mean {late:+.2f}", [run.name],
                HOLDS if ok else FAILS, threshold, margin=margin)


def small_lr_zigzag(runs: list[Run], t: dict) -> dict:
    claim, paper = "zigzag still appears at small learning rates", "VGG-16 lr 0.01, ResNet-18 lr 0.001: zigzag"
    threshold = f"every small-lr run has a step with mean_mu < {t['zigzag_strong']}"
    if not runs:
        return _not_run(claim, paper, threshold)
    minima = {r.name: float(np.nanmin(r.mean_mu)) for r in runs}
    ok = all(v < t["zigzag_strong"] for v in minima.values())
    return _row(claim, paper, "; ".join(f"{n} min {v:+.2f}" for n, v in minima.items()), list(minima),
                HOLDS if ok else FAILS, threshold, margin=_tightest(minima, t["zigzag_strong"], False, "min"))


def loss_share(runs: list[Run], t: dict) -> dict:
    claim, paper = "a substantial part of the loss decrease happens in the zigzag phase", "substantial, all runs"
    threshold = f"zigzag share of the loss decrease >= {t['loss_share']} in every run"
    if not runs:
        return _not_run(claim, paper, threshold)
    shares = {r.name: r.an.zigzag_loss_share for r in runs}
    ok = all(np.isfinite(v) and v >= t["loss_share"] for v in shares.values())
    return _row(claim, paper, "; ".join(f"{n} {v:.2f}" for n, v in shares.items()), list(shares),
                HOLDS if ok else FAILS, threshold, margin=_tightest(shares, t["loss_share"], True, "share"))


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
                HOLDS if gap <= t["batch_gap"] else FAILS, threshold, margin=_margin("gap", gap, t["batch_gap"], False))


def final_accuracy(run: Run) -> float:
    acc = run.traj.steps["test_accuracy"]
    return float(acc[np.isfinite(acc)][-1]) if np.isfinite(acc).any() else np.nan


def gawu_close_to_best_wu(gawu: Run | None, wu: list[list[Run]], t: dict) -> dict:
    """``gawu``: this seed's GAWU run; ``wu``: every WU run with all its finished seeds (Table 1's rows)."""
    claim = "GAWU switches close to the best WU change point, with comparable accuracy (Table 1)"
    paper = "GAWU t = 11, best WU t = 12; comparable test accuracy"
    threshold = (f"GAWU switched; |GAWU t - t of the WU run with the best mean final test accuracy| <= "
                 f"{t['gawu_gap']}; GAWU final test accuracy >= that run's mean - {t['gawu_accuracy_sds']} x "
                 f"its sample sd over seeds")
    finished = [(seeds, acc[np.isfinite(acc)]) for seeds in wu
                for acc in [np.array([final_accuracy(r) for r in seeds])]]
    scored = [(float(acc.mean()), seeds, acc) for seeds, acc in finished if len(acc)]
    if gawu is None or not scored:
        return _not_run(claim, paper, threshold, [gawu.name] if gawu else [])
    best_mean, best, accuracies = max(scored, key=lambda item: item[0])
    best_sd = float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else np.nan
    best_t = store.schedule_change_point(best[0].traj)
    runs = [gawu.name, *(r.name for r in best)]
    gawu_t, acc = store.schedule_change_point(gawu.traj), final_accuracy(gawu)
    best_text = f"best WU t = {best_t} ({100 * best_mean:.1f}% ± {100 * best_sd:.1f}%)"
    if gawu_t is None:
        return _row(claim, paper, f"GAWU never switched; {best_text}", runs, FAILS, threshold, never_switched=True)
    measured = f"GAWU t = {gawu_t} ({100 * acc:.1f}%); {best_text}"
    if not np.isfinite(best_sd):
        return _row(claim, paper, measured + "; the spread needs 2 finished seeds of that WU run", runs, NOT_RUN,
                    threshold)
    floor = best_mean - t["gawu_accuracy_sds"] * best_sd
    ok = abs(gawu_t - best_t) <= t["gawu_gap"] and acc >= floor
    margin = (f"|t - best t| = {abs(gawu_t - best_t)} against {t['gawu_gap']:g}: "
              f"{_spare(abs(gawu_t - best_t), t['gawu_gap'], False):+g} units; "
              f"accuracy {100 * acc:.1f}% against {100 * floor:.1f}%: {100 * (acc - floor):+.1f} points")
    return _row(claim, paper, measured, runs, HOLDS if ok else FAILS, threshold, margin=margin)


def onset_at_edge_of_stability(runs: list[Run], t: dict) -> dict:
    claim = "zigzag onset coincides with the sharpness reaching 2/lr (edge of stability; not in the paper)"
    paper = "not measured in the paper"
    threshold = (f"|zigzag onset - first step with sharpness >= (1 - tol) 2/lr| <= {t['eos_gap']} steps "
                 f"in every run that reaches both")
    if not runs:
        return _not_run(claim, paper, threshold)
    parts, ok, seen, gaps = [], True, False, {}
    for r in runs:
        onset, eos = r.an.zigzag_onset, r.an.eos_step
        parts.append(f"{r.name}: onset {'none' if onset is None else onset}, 2/lr at {'never' if eos is None else eos}")
        if onset is not None and eos is not None:
            seen = True
            ok &= abs(onset - eos) <= t["eos_gap"]
            gaps[r.name] = (onset, eos)
        elif onset is not None or eos is not None:
            ok = False
            gaps[r.name] = (onset, eos)
    verdict = (HOLDS if ok else FAILS) if seen or not ok else NOT_RUN
    return _row(claim, paper, "; ".join(parts), [r.name for r in runs], verdict, threshold,
                margin=_eos_margin(gaps, t["eos_gap"]))


def _eos_margin(gaps: dict[str, tuple[int | None, int | None]], allowed: int) -> str:
    """The tightest run's onset against its 2/lr step: "onset 12 against 2/lr at 10: 2 of the 10 steps allowed
    (+8)"; a run that reaches only one of them fails with no margin to give."""
    if not gaps:
        return "-"
    one_sided = [name for name, (onset, eos) in gaps.items() if onset is None or eos is None]
    if one_sided:
        return f"{one_sided[0]} reaches only one of onset and 2/lr: no margin"
    name = max(gaps, key=lambda n: abs(gaps[n][0] - gaps[n][1]))
    onset, eos = gaps[name]
    return (f"tightest {name}: onset {onset} against 2/lr at {eos}: {abs(onset - eos)} of the {allowed} steps "
            f"allowed ({allowed - abs(onset - eos):+d})")


def overall_verdict(verdicts: list[str], rule: str) -> str:
    """Combine the per-seed verdicts of one claim by ``rule`` (module docstring)."""
    n, holds, fails = len(verdicts), verdicts.count(HOLDS), verdicts.count(FAILS)
    if holds + fails == 0:
        return NOT_RUN
    if rule == "every_seed":
        return HOLDS if holds == n else FAILS if holds == 0 else MIXED
    return HOLDS if holds > n / 2 else FAILS if fails > n / 2 else MIXED


def claims_table(groups: dict[str, list[list[tuple[str, str, str] | None]]], thresholds: dict, seeds: list[int],
                 overall: str = "every_seed") -> pd.DataFrame:
    """``groups``: claim group -> runs -> one (job name, trajectory, analysis) per seed of ``seeds``, in
    that order (None: not configured); a missing group is not run. A job that did not complete (running
    or diverged) counts as not run on its seed. One row per claim: the measured value and its margin per seed, a
    ``seed <s>`` verdict column per seed and the overall ``verdict`` by the rule ``overall``."""
    if overall not in OVERALL_RULES:
        raise ZigzagError(f"claims: invalid overall rule {overall!r}; must be one of {', '.join(OVERALL_RULES)}")
    if not seeds:
        raise ZigzagError("claims: no seeds given; name at least one")
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ZigzagError(f"claims: unknown group(s) {', '.join(unknown)}; valid: {', '.join(GROUPS)}")
    check_thresholds(thresholds)

    def load(entry):
        if entry is None:
            return None
        name, trajectory, analysis_file = entry
        run = Run(name, store.read_trajectory(trajectory), store.read_analysis(analysis_file))
        store.check_analysis_of(run.traj, trajectory, run.an, analysis_file)
        return run if run.traj.status == "completed" else None

    loaded = {key: [[load(e) for e in per_seed] for per_seed in runs] for key, runs in groups.items()}

    def at(key, i):  # the finished seed-i jobs of every run of a group
        return [per_seed[i] for per_seed in loaded.get(key, []) if i < len(per_seed) and per_seed[i] is not None]

    def first(key, i):  # the seed-i job of a group's first run, or None
        runs = loaded.get(key, [])
        return runs[0][i] if runs and i < len(runs[0]) else None

    wu = [[r for r in per_seed if r is not None] for per_seed in loaded.get("wu", [])]
    t = thresholds
    per_seed = [[
        smooth_then_zigzag(first("cnn", i), t),
        *sign_flips(at("cnn", i) + at("sign_flips", i), t),
        zigzag_then_smooth(first("resnet", i), t),
        small_lr_zigzag(at("small_lr", i), t),
        loss_share(at("loss_share", i), t),
        batch_sizes_similar(at("batch_sizes", i), t),
        gawu_close_to_best_wu(first("gawu", i), wu, t),
        onset_at_edge_of_stability(at("sharpness", i), t),
    ] for i in range(len(seeds))]
    seed_columns = [f"seed {s}" for s in seeds]
    rows = []
    for by_seed in zip(*per_seed):
        verdicts = [r["verdict"] for r in by_seed]
        measured = " | ".join(f"seed {s}: {r['measured']}" for s, r in zip(seeds, by_seed))
        never = sum(r["never_switched"] for r in by_seed)
        if never:
            measured = f"GAWU never switched on {never} of {len(seeds)} seeds | {measured}"
        runs = list(dict.fromkeys(name for r in by_seed for name in r["runs"].split(", ") if name))
        margin = " | ".join(f"seed {s}: {r['margin']}" for s, r in zip(seeds, by_seed))
        rows.append({"claim": by_seed[0]["claim"], "paper": by_seed[0]["paper"], "measured": measured,
                     "runs": ", ".join(runs), "threshold": by_seed[0]["threshold"], "margin": margin,
                     **dict(zip(seed_columns, verdicts)), "verdict": overall_verdict(verdicts, overall)})
    df = pd.DataFrame(rows, columns=[*COLUMNS[:-1], *seed_columns, "verdict"])
    df.attrs["overall"] = overall
    return df
