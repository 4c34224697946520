"""Sweeps: the config's expansion into runs, the onset and its fit, the onset_vs_lr table and the phase diagram."""

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zigzag import analysis, configcheck, figures, onsets, pipeline, store, tables
from zigzag.errors import ZigzagError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
BASE = {"dataset": "d", "model": "cnn", "width": 0.5, "batch_norm": False, "lr": 0.1, "steps": 20,
        "micro_batch": 100, "sharpness": {"every": "every:10", "subset": 50}}
SGD = {"dataset": "d", "model": "cnn", "batch_norm": False, "optimizer": "sgd", "lr": 0.1, "batch_size": 50,
       "epochs": 2, "micro_batch": 50}


def config(sweeps, runs=None, **sections):
    return {"datasets": {"d": {"source": "mnist5k", "train_size": 100}},
            "runs": copy.deepcopy(runs or {"base": BASE, "sgd": SGD}), "figures": {}, "sweeps": sweeps, **sections}


def checked(sweeps, runs=None, **sections):
    return configcheck.checked_config(config(sweeps, runs, **sections), SCHEMA)


def test_sweep_expands_into_named_runs_that_inherit_the_base():
    c = checked({"s": {"base": "base", "lr": {"log": [0.003, 0.6], "n": 9}, "seeds": [0, 1]}})
    names = c["sweeps"]["s"]["runs"]
    assert names[0] == "s-lr0.003" and names[-1] == "s-lr0.6" and len(names) == 9
    assert "s-lr0.0113" in names  # 0.003 x 200^(2/8) = 0.01128...: 3 significant digits
    run = c["runs"]["s-lr0.0113"]
    assert run["lr"] == 0.0113 and run["seeds"] == [0, 1] and run["width"] == 0.5
    assert run["sharpness"] == {"every": "every:10", "subset": 50}
    assert pipeline.run_jobs(c, "s-lr0.0113") == ["s-lr0.0113-seed0", "s-lr0.0113-seed1"]
    assert c["runs"]["base"]["lr"] == 0.1  # the base run stays as it was
    # the base's raw dumps are its own: every point records the statistics, not the raw vectors
    dumps = checked({"s": {"base": "base", "lr": [0.05]}},
                    runs={"base": {**BASE, "raw_gradients": "every:1", "raw_parameters": "every:1"}, "sgd": SGD})
    assert dumps["runs"]["s-lr0.05"]["raw_gradients"] == "none" == dumps["runs"]["s-lr0.05"]["raw_parameters"]
    # a sweep's runs get no sharpness figure of their own (all_figures stays as it was)
    assert not [f for f in configcheck.add_sharpness_figures(c)["figures"] if f.startswith("sharpness_s-")]


def test_sweep_axes_lists_and_products():
    c = checked({"g": {"base": "base", "lr": [0.01, 0.123456], "width": {"lin": [0.25, 0.5], "n": 2}},
                 "b": {"base": "sgd", "batch_size": {"log": [10, 40], "n": 3}}})
    assert c["sweeps"]["g"]["runs"] == ["g-lr0.01-width0.25", "g-lr0.01-width0.5", "g-lr0.123-width0.25",
                                        "g-lr0.123-width0.5"]
    assert c["runs"]["g-lr0.123-width0.25"]["lr"] == 0.123 and c["runs"]["g-lr0.123-width0.25"]["width"] == 0.25
    assert c["sweeps"]["b"]["runs"] == ["b-batch_size10", "b-batch_size20", "b-batch_size40"]
    assert c["runs"]["b-batch_size20"]["batch_size"] == 20 and "seeds" not in c["runs"]["b-batch_size20"]


BAD_SWEEPS = {
    "base": ({"s": {"base": "nope", "lr": [0.1]}}, "sweeps.s.base: run 'nope' is not defined"),
    "axis": ({"s": {"base": "base", "momentum": [0.9]}}, "sweeps.s: unknown key 'momentum'"),
    "no axis": ({"s": {"base": "base"}}, "sweeps.s: no axis"),
    "sgd axis": ({"s": {"base": "base", "batch_size": [10]}}, "sweeps.s.batch_size: not an axis of a gd base run"),
    "low >= high": ({"s": {"base": "base", "lr": {"log": [0.5, 0.1], "n": 3}}},
                    "sweeps.s.lr.log: [0.5, 0.1] is not allowed; low must be below high"),
    "log bound": ({"s": {"base": "base", "width": {"log": [0, 1], "n": 3}}},
                  "sweeps.s.width.log: [0, 1] is not allowed; a log range needs bounds > 0"),
    "n": ({"s": {"base": "base", "lr": {"lin": [0.1, 0.2], "n": 1}}}, "sweeps.s.lr.n: 1 is not allowed"),
    "same point": ({"s": {"base": "base", "lr": [0.1, 0.10001]}}, "sweeps.s: two points expand to run 's-lr0.1'"),
    "two sweeps": ({"s": {"base": "base", "lr": [0.1], "width": [0.5]}, "s-lr0.1": {"base": "base", "width": [0.5]}},
                   "sweeps.s-lr0.1: its run 's-lr0.1-width0.5' is also a run of sweeps.s"),
    "bad value": ({"s": {"base": "base", "lr": [-0.1]}}, "runs.s-lr-0.1.lr: -0.1 is not allowed; must be > 0"),
}


@pytest.mark.parametrize("case", BAD_SWEEPS)
def test_bad_sweep_stops_the_check_with_one_line(case):
    sweeps, message = BAD_SWEEPS[case]
    with pytest.raises(ZigzagError) as err:
        checked(sweeps)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sweep_run_colliding_with_a_run_and_unknown_sweep_references_are_refused():
    with pytest.raises(ZigzagError, match=r"^sweeps.s: its run 's-lr0.1' is also a run of runs"):
        checked({"s": {"base": "base", "lr": [0.1]}}, runs={"base": BASE, "s-lr0.1": BASE})
    with pytest.raises(ZigzagError, match=r"^figures.p.sweep: 'nope' is not defined; defined sweeps: s$"):
        checked({"s": {"base": "base", "lr": [0.1]}},
                figures={"p": {"kind": "phase_diagram", "sweep": "nope", "title": "t"}})
    with pytest.raises(ZigzagError, match=r"^tables.t.sweep: 'nope' is not defined"):
        checked({"s": {"base": "base", "lr": [0.1]}}, tables={"t": {"kind": "onset_vs_lr", "sweep": "nope",
                                                                    "caption": "c"}})


def test_sweep_figures_and_tables_are_planned_for_all_sweeps_only():
    c = checked({"s": {"base": "base", "lr": [0.05, 0.1], "seeds": [0, 1]}},
                figures={"p": {"kind": "phase_diagram", "sweep": "s", "title": "t"},
                         "f": {"kind": "trajectory", "run": "base", "title": "t"}},
                tables={"t": {"kind": "onset_vs_lr", "sweep": "s", "caption": "c"}})
    assert pipeline.entries(c, "figures", sweeps=True) == ["p"]
    assert pipeline.entries(c, "figures", sweeps=False) == ["f"]
    assert pipeline.entries(c, "tables", sweeps=True) == ["t"] and pipeline.entries(c, "tables", sweeps=False) == []
    jobs = ["s-lr0.05-seed0", "s-lr0.05-seed1", "s-lr0.1-seed0", "s-lr0.1-seed1"]
    assert pipeline.figure_jobs(c, c["figures"]["p"]) == jobs == pipeline.table_jobs(c, c["tables"]["t"])
    assert pipeline.table_inputs(c, c["tables"]["t"])[:2] == [pipeline.trajectory_file(c, jobs[0]),
                                                              pipeline.analysis_file(c, jobs[0])]
    command = pipeline.table_command(c, c["tables"]["t"]).split()
    assert command[:2] == ["onset-vs-lr", "--point"] and command.count("--point") == 2


# ---------------------------------------------------------------------------------------------
# Onsets, the fit and the table on synthetic runs.


def sweep_run(lr, seed, onset, diverged=False):
    return onsets.SweepRun(run=f"r{lr}", lr=lr, seed=seed, onset=onset, eos_step=None, final_loss=0.1,
                           diverged=diverged, mean_mu=np.zeros(5), lambda0=math.nan, smooth_above=0.5,
                           zigzag_below=-0.5)


def test_fit_is_per_seed_over_the_runs_that_zigzag_and_did_not_diverge():
    lrs = [0.01, 0.03, 0.1, 0.3]
    runs = [sweep_run(lr, 0, round(2.0 * lr ** -1.5)) for lr in lrs]
    runs += [sweep_run(lr, 1, round(5.0 * lr ** -1.0)) for lr in lrs]
    runs += [sweep_run(0.001, 0, None), sweep_run(1.0, 0, 1000, diverged=True), sweep_run(1.0, 1, None, True)]
    slopes = onsets.fit_slopes(runs)
    assert slopes[0] == pytest.approx(-1.5, abs=0.01) and slopes[1] == pytest.approx(-1.0, abs=0.01)
    mean, sd, n = onsets.slope_summary(slopes)
    assert n == 2 and mean == pytest.approx(-1.25, abs=0.01) and sd == pytest.approx(0.5 / math.sqrt(2), abs=0.01)
    assert onsets.largest_never_zigzag_lr(runs) == 0.001 and onsets.smallest_diverged_lr(runs) == 1.0
    assert onsets.fit_slopes([sweep_run(0.1, 0, 5), sweep_run(0.2, 0, None)]) == {}  # one point: no slope


H, LAGS, K = 4, 4, 40


def write_point(folder: Path, lr: float, seed: int, onset: int | None, diverged_at: int | None = None):
    """A GD run at ``lr``: smooth gradients, then alternating signs from step ``onset``; sharpness 4 at step 0."""
    folder.mkdir(parents=True, exist_ok=True)
    traj_path, analysis_path = folder / "trajectory.h5", folder / "analysis.h5"
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(30)
    n = K if diverged_at is None else diverged_at + 1
    grads = [base * (1 if onset is None or k < onset else (-1) ** k) + 0.05 * rng.standard_normal(30)
             for k in range(n)]
    writer = store.TrajectoryWriter.create(traj_path, {"optimizer": "gd", "lr": lr, "seed": seed, "schedule": {}},
                                           n_params=30, n_train=100, lags=LAGS, attrs={"total_steps": K},
                                           extra_series={"sharpness": "top eigenvalue"})
    for k, g in enumerate(grads):
        dot, opposite = np.full(LAGS + 1, np.nan), np.full(LAGS + 1, np.nan)
        for lag in range(min(k, LAGS) + 1):
            dot[lag], opposite[lag] = g @ grads[k - lag], np.mean(g * grads[k - lag] < 0)
        row = {"loss": 2.0 / (1 + k), "accuracy": 0.5, "lr": lr, "epoch": k, "grad_norm": np.sqrt(dot[0]),
               "time": 0.01 * k, "dot": dot, "opposite": opposite, "sharpness": 4.0 + 0.5 * k if k % 5 == 0 else np.nan}
        if k == diverged_at:
            row["loss"], dot[:] = np.nan, np.nan
        writer.append(row)
    if diverged_at is None:
        writer.finish("completed")
    else:
        writer.finish("diverged", diverged_at=diverged_at)
    traj = store.read_trajectory(traj_path)
    store.write_analysis(analysis_path, analysis.analyze(traj.steps, H, [], 0.5, -0.5), {}, traj.attrs)
    return str(traj_path), str(analysis_path)


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    plan = {0.01: (None, None), 0.05: (30, 20), 0.2: (12, 8), 1.0: (3, None)}  # lr -> onset of seeds 0, 1
    return [(f"s-lr{lr:g}", [write_point(root / f"{lr}-{seed}", lr, seed, onset,
                                         diverged_at=10 if lr == 1.0 and seed == 1 else None)
                             for seed, onset in enumerate(onsets_of)])
            for lr, onsets_of in plan.items()]


def test_onsets_are_the_analysis_onsets_and_lambda0_is_the_first_sharpness(points):
    runs = onsets.load_sweep(points)
    assert [(r.lr, r.seed) for r in runs][:2] == [(0.01, 0), (0.01, 1)]
    for r, (traj, an) in zip(runs, [pair for _, pairs in points for pair in pairs]):
        assert r.onset == store.read_analysis(an).zigzag_onset and r.lambda0 == 4.0
    assert [r.onset is None for r in runs] == [True, True, False, False, False, False, False, True]
    assert [r.diverged for r in runs] == [False] * 7 + [True]
    assert onsets.catapult_lr(runs) == 0.5 and onsets.smallest_diverged_lr(runs) == 1.0
    assert onsets.largest_never_zigzag_lr(runs) == 0.01


def test_onset_table_has_a_row_per_lr_and_seed_and_the_fit(points, tmp_path):
    df = tables.onset_table(points)
    runs = onsets.load_sweep(points)
    assert len(df) == 9 and df[tables.LR].iloc[:-1].tolist() == [r.lr for r in runs]
    assert df[tables.ONSET].iloc[:2].tolist() == ["-", "-"] and df[tables.DIVERGED].iloc[:-1].tolist().count("yes") == 1
    slopes = onsets.fit_slopes(runs)
    mean, sd, n = onsets.slope_summary(slopes)
    assert n == 2 and df[tables.SLOPE].iloc[-1] == pytest.approx(mean) and df[tables.SLOPE_SD].iloc[-1] == sd
    tables.write_table(df, str(tmp_path / "onset"), "Onset")
    md = (tmp_path / "onset.md").read_text()
    assert f"{mean:.2f} ± {sd:.2f}" in md and "| 0.01 |" in md
    assert pd.read_csv(tmp_path / "onset.csv")[tables.SLOPE].iloc[-1] == pytest.approx(mean)


def test_phase_diagram_renders(points, tmp_path):
    fig = figures.build_phase_diagram(points, "sweep")
    heat, side = fig.axes[0], fig.axes[1]
    assert heat.get_yscale() == "log" and side.get_xscale() == "log" and side.get_yscale() == "log"
    assert any("2/$\\lambda_0$" in t.get_text() for t in heat.get_legend().get_texts())
    censored = [c for c in side.collections if c.get_label().startswith("never zigzags")]
    assert [tuple(xy) for xy in censored[0].get_offsets()] == [(0.01, K), (0.01, K)]  # not the diverged seed
    texts = [t.get_text() for t in side.texts]
    assert any("never zigzagging: 0.01" in t for t in texts) and any("diverging: 1" in t for t in texts)
    figures.render("phase_diagram", points, "sweep", str(tmp_path / "p.png"), str(tmp_path / "p.pdf"))
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "p.pdf").stat().st_size > 0
