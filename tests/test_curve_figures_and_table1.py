"""Figures 7, 9, 10 and Table 1 from small SGD trajectories written through the real store and analysis."""

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from zigzag import analysis, figures, store, tables
from zigzag.errors import ZigzagError

H, LAGS, BPE, EPOCHS = 5, 4, 4, 14
K = BPE * EPOCHS  # iterations of a full run


def schedule_lr(kind, t, steps=K):
    """Per-iteration lr of exponential warm-up to epoch t, then cosine decay (constant: 0.1)."""
    epochs = np.arange(steps) // BPE
    if kind == "constant" or t < 0:
        return np.full(steps, 0.1) if kind == "constant" else 1e-3 * np.exp(0.1 * epochs)
    peak = 1e-3 * np.exp(0.1 * t)
    return np.where(epochs < t, 1e-3 * np.exp(0.1 * epochs),
                    peak * 0.5 * (1 + np.cos(np.pi * (epochs - t) / (EPOCHS - t))))


def write_run(folder, seed, *, kind="gawu", t=11, final_acc=0.9, diverged_at=None):
    """One SGD run (4 iterations per epoch) with exact lag statistics of random gradients, its analysis
    (h = 5); returns (trajectory, analysis) paths."""
    folder.mkdir(parents=True, exist_ok=True)
    traj_path, analysis_path = folder / "trajectory.h5", folder / "analysis.h5"
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(20)
    n_steps = K if diverged_at is None else diverged_at + 1
    grads = np.stack([base * (-1) ** (k // 3) + rng.standard_normal(20) for k in range(n_steps)])
    schedule = {"kind": kind, "eta0": 1e-3, "omega": 0.1} if kind != "constant" else {"kind": "constant"}
    if kind == "warmup_cosine":
        schedule["change_point"] = t
    writer = store.TrajectoryWriter.create(
        traj_path, {"optimizer": "sgd", "batch_size": 250, "seed": seed, "schedule": schedule},
        n_params=20, n_train=1000, lags=LAGS, attrs={"batches_per_epoch": BPE, "total_steps": K})
    lr = schedule_lr(kind, t)
    for k, g in enumerate(grads):
        dot, opposite = np.full(LAGS + 1, np.nan), np.full(LAGS + 1, np.nan)
        for lag in range(min(k, LAGS) + 1):
            dot[lag] = g @ grads[k - lag]
            opposite[lag] = np.mean(g * grads[k - lag] < 0)
        row = {"loss": 2.3 * np.exp(-0.05 * k) * (1 + 0.1 * rng.random()), "accuracy": 0.5, "lr": lr[k],
               "epoch": k // BPE, "grad_norm": np.sqrt(dot[0]), "time": 0.01 * k, "dot": dot, "opposite": opposite}
        if k % 8 == 0 or k == K - 1:
            row["test_loss"], row["test_accuracy"] = 1.0, (final_acc if k == K - 1 else 0.3)
        if k == diverged_at:
            row["loss"], row["grad_norm"], dot[:] = np.nan, np.nan, np.nan
        writer.append(row)
    if diverged_at is None:
        writer.finish("completed", change_point_step=t * BPE, change_point_epoch=t)
    else:
        writer.finish("diverged", diverged_at=diverged_at, change_point_step=t * BPE, change_point_epoch=t)
    traj = store.read_trajectory(traj_path)
    store.write_analysis(analysis_path, analysis.analyze(traj.steps, H, [], 0.5, -0.5), {}, traj.attrs)
    return str(traj_path), str(analysis_path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {
        "gawu": [write_run(root / f"gawu{s}", s, t=t, final_acc=a)
                 for s, t, a in ((0, 11, 0.9123), (1, 11, 0.9080), (2, 10, 0.9170))],
        "gawu_one": [write_run(root / "gawu_one", 7, t=11)],
        "diverging": [write_run(root / "div0", 3, kind="warmup_cosine", t=12, final_acc=0.91),
                      write_run(root / "div1", 4, kind="warmup_cosine", t=12, final_acc=0.93),
                      write_run(root / "div2", 5, kind="warmup_cosine", t=12, diverged_at=30)],
    }
    for t in (5, 10, 12):
        out[f"wu{t}"] = [write_run(root / f"wu{t}", 10 + t, kind="warmup_cosine", t=t, final_acc=0.85 + t / 200)]
    return out


def seeds(pairs, name):
    """[seeds, steps] of a series: mean_mu from the analyses, anything else from the trajectories."""
    if name == "mean_mu":
        return np.stack([store.read_analysis(a).mean_mu for _, a in pairs])
    return np.stack([store.read_trajectory(t).steps[name] for t, _ in pairs])


def line(ax, label):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return found


def band_at(ax, index, x):
    """The (lower, upper) y of the index-th shaded band at x."""
    vertices = np.concatenate([p.vertices for p in ax.collections[index].get_paths()])
    ys = vertices[np.isclose(vertices[:, 0], x), 1]
    return ys.min(), ys.max()


def legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def test_warmup_figure_draws_the_seed_mean_band_lr_and_change_points(runs):
    pairs = runs["gawu"]
    fig = figures.build_warmup_figure(("GAWU", pairs), "warm-up")
    ax, ax_lr = fig.axes[:2]
    mu = line(ax, "mean gradient correlation")
    np.testing.assert_array_equal(mu.get_xdata(), np.arange(K) / BPE)  # epochs of the iterations
    mean_mu = seeds(pairs, "mean_mu")
    np.testing.assert_allclose(mu.get_ydata(), mean_mu.mean(axis=0), rtol=1e-12, equal_nan=True)
    assert np.isnan(mu.get_ydata()[-(H - 1):]).all() and np.isfinite(mu.get_ydata()[:-(H - 1)]).all()
    i = 13  # x = 3.25 epochs
    sd = mean_mu[:, i].std(ddof=1)
    np.testing.assert_allclose(band_at(ax, 0, i / BPE), (mean_mu[:, i].mean() - sd, mean_mu[:, i].mean() + sd))
    assert ax.get_ylim() == (-1.05, 1.05) and ax.get_xlabel() == "epoch"
    assert any(list(ln.get_ydata()) == [0, 0] for ln in ax.get_lines())  # the zero line

    lr = seeds(pairs, "lr")
    np.testing.assert_allclose(line(ax_lr, "learning rate").get_ydata(), lr.mean(axis=0), rtol=1e-12)
    assert ax_lr.get_ylabel() == "learning rate" and ax_lr.get_shared_x_axes().joined(ax, ax_lr)
    lo, hi = band_at(ax_lr, 0, 12.0)
    assert hi - lo == pytest.approx(2 * lr[:, 48].std(ddof=1)) and hi > lo

    dotted = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":")
    assert dotted == [10.0, 11.0]  # detected per seed: 11, 11, 10 (epochs)
    labels = legend_texts(fig.legends[0])
    assert labels == ["mean gradient correlation", "learning rate", "t = 10 (1 of 3 seeds)", "t = 11 (2 of 3 seeds)"]
    assert fig.legends[0].get_title().get_text() == "GAWU (t = 11, 11, 10)"
    assert fig.get_supxlabel() == "lines: mean over 3 seeds, shaded: mean ± 1 sd"


def test_one_seed_is_its_own_line_and_the_change_point_is_labelled(runs):
    (pair,) = runs["gawu_one"]
    fig = figures.build_warmup_figure(("GAWU", [pair]), "one seed")
    ax, ax_lr = fig.axes[:2]
    np.testing.assert_array_equal(line(ax, "mean gradient correlation").get_ydata(),
                                  store.read_analysis(pair[1]).mean_mu)
    assert not ax.collections and not ax_lr.collections  # no band
    (change,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert list(change.get_xdata()) == [11.0, 11.0]
    assert "t = 11" in legend_texts(fig.legends[0]) and " t = 11" in [t.get_text() for t in ax.texts]
    assert fig.legends[0].get_title().get_text() == "GAWU (t = 11)" and fig.get_supxlabel() == ""


def test_batch_size_figure_mixes_seed_counts_and_aligns_a_diverged_seed(runs):
    curves = [("B = 1000, lr 0.4", runs["gawu"]), ("B = 500, lr 0.2", runs["wu5"]),
              ("B = 250, lr 0.1", runs["diverging"])]
    fig = figures.build_batch_size_figure(curves, "batch sizes")
    (ax,) = fig.axes
    np.testing.assert_allclose(line(ax, "B = 1000, lr 0.4").get_ydata(), seeds(runs["gawu"], "mean_mu").mean(axis=0),
                               equal_nan=True)
    np.testing.assert_array_equal(line(ax, "B = 500, lr 0.2").get_ydata(), seeds(runs["wu5"], "mean_mu")[0])
    diverging = line(ax, "B = 250, lr 0.1")
    common = np.stack([store.read_analysis(a).mean_mu[:31] for _, a in runs["diverging"]])
    np.testing.assert_array_equal(diverging.get_xdata(), np.arange(31) / BPE)
    np.testing.assert_allclose(diverging.get_ydata(), common.mean(axis=0), equal_nan=True)
    assert legend_texts(fig.legends[0]) == ["B = 1000, lr 0.4 [n = 3]", "B = 500, lr 0.2 [n = 1]",
                                             "B = 250, lr 0.1 [n = 3], 1 of 3 diverged"]
    assert len(ax.collections) == 2 and ax.get_ylim() == (-1.05, 1.05)
    note = fig.get_supxlabel()
    assert "shaded: mean ± 1 sd" in note and "1 of 3 seeds diverged (at step 30)" in note
    assert "seeds aligned on their common first 31 steps" in note


def test_schedules_figure_compares_gawu_with_warm_up(runs):
    curves = [("GAWU", runs["gawu_one"]), ("WU (t = 5)", runs["wu5"]), ("WU (t = 10)", runs["wu10"]),
              ("WU (t = 12)", runs["wu12"])]
    fig = figures.build_schedules_figure(curves, "GAWU vs WU")
    ax_loss, ax_lr = fig.axes
    assert legend_texts(fig.legends[0]) == ["GAWU (t = 11)", "WU (t = 5)", "WU (t = 10)", "WU (t = 12)"]
    assert ax_loss.get_yscale() == "log" and ax_lr.get_yscale() == "linear"
    for label, key in (("GAWU", "gawu_one"), ("WU (t = 12)", "wu12")):
        np.testing.assert_array_equal(line(ax_loss, label).get_ydata(), seeds(runs[key], "loss")[0])
        np.testing.assert_array_equal(line(ax_lr, label).get_ydata(), seeds(runs[key], "lr")[0])
    assert np.argmax(line(ax_lr, "WU (t = 5)").get_ydata()) == 5 * BPE  # the peak at epoch t

    several = figures.build_schedules_figure([("GAWU", runs["gawu"]), ("WU (t = 12)", runs["wu12"])], "seeds")
    assert legend_texts(several.legends[0]) == ["GAWU (t = 11, 11, 10) [n = 3]", "WU (t = 12) [n = 1]"]


@pytest.mark.filterwarnings("error")
def test_the_three_figures_render_to_png_and_pdf(runs, tmp_path):
    out = tmp_path / "figs"
    figures.render("warmup", ("GAWU", runs["gawu"]), "Figure 7", str(out / "f7.png"), str(out / "f7.pdf"))
    figures.render("batch_sizes", [("B = 1000", runs["gawu"]), ("B = 250", runs["diverging"])], "Figure 9",
                   str(out / "f9.png"), str(out / "f9.pdf"))
    figures.render("schedules", [("GAWU", runs["gawu"]), ("WU (t = 5)", runs["wu5"])], "Figure 10",
                   str(out / "f10.png"), str(out / "f10.pdf"))
    assert sorted(p.name for p in out.iterdir()) == ["f10.pdf", "f10.png", "f7.pdf", "f7.png", "f9.pdf", "f9.png"]
    for name in ("f7", "f9", "f10"):
        assert matplotlib.image.imread(out / f"{name}.png")[..., :3].std() > 0.05
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_curve_errors_name_the_problem(runs, tmp_path):
    with pytest.raises(ZigzagError, match="no curves given"):
        figures.build_schedules_figure([], "x")
    with pytest.raises(ZigzagError, match="curve 'A': no \\(trajectory, analysis\\) files"):
        figures.build_warmup_figure(("A", []), "x")
    traj, _ = runs["wu5"][0]
    _, short = runs["diverging"][2]
    with pytest.raises(ZigzagError, match="was made from another trajectory than .*; re-run `zigzag analyze"):
        figures.build_warmup_figure(("A", [(traj, short)]), "x")


def test_schedule_table_reports_final_test_accuracy_over_seeds(runs, tmp_path):
    rows = [("GAWU", [t for t, _ in runs["gawu"]]), ("WU (t = 5)", [t for t, _ in runs["wu5"]]),
            ("WU (t = 12)", [t for t, _ in runs["diverging"]])]
    df = tables.schedule_table(rows)
    assert list(df[tables.SCHEDULE]) == ["GAWU", "WU (t = 5)", "WU (t = 12)"]
    assert list(df[tables.SEEDS]) == [3, 1, 3]
    assert list(df[tables.CHANGE_POINT]) == ["11, 11, 10", "5", "12"]
    gawu = 100 * np.array([0.9123, 0.9080, 0.9170])
    assert df[tables.MEAN][0] == pytest.approx(gawu.mean()) and df[tables.SD][0] == pytest.approx(gawu.std(ddof=1))
    assert df[tables.ACCURACY][0] == f"{gawu.mean():.2f} ± {gawu.std(ddof=1):.2f}" == "91.24 ± 0.45"
    assert df[tables.MEAN][1] == pytest.approx(87.5) and math.isnan(df[tables.SD][1])
    assert df[tables.ACCURACY][1] == "87.50"
    finished = np.array([91.0, 93.0])  # the diverged seed counts as NaN
    assert df[tables.MEAN][2] == pytest.approx(finished.mean())
    assert df[tables.SD][2] == pytest.approx(finished.std(ddof=1))
    assert df[tables.ACCURACY][2] == "92.00 ± 1.41" and df[tables.NOTE][2] == "1 of 3 diverged; mean over 2"
    assert list(df[tables.NOTE][:2]) == ["", ""]

    prefix = tmp_path / "tables" / "table_1"
    tables.write_table(df, str(prefix), "Test accuracy of the final model trained by GAWU and WU (100% = all).")
    back = pd.read_csv(f"{prefix}.csv", dtype={tables.CHANGE_POINT: str}).fillna({tables.NOTE: ""})
    pd.testing.assert_frame_equal(back, df, check_flags=False)

    md = (tmp_path / "tables" / "table_1.md").read_text().splitlines()
    header = "| schedule | seeds | change point t | test accuracy (%) | note |"
    assert md[0].startswith("**Test accuracy") and md[2] == header and md[3] == "| --- | ---: | --- | --- | --- |"
    assert md[4] == "| GAWU | 3 | 11, 11, 10 | 91.24 ± 0.45 |  |"
    assert md[6] == "| WU (t = 12) | 3 | 12 | 92.00 ± 1.41 | 1 of 3 diverged; mean over 2 |"

    tex = (tmp_path / "tables" / "table_1.tex").read_text()
    for part in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrlrl}", r"\label{tab:table_1}",
                 r"\caption{Test accuracy of the final model trained by GAWU and WU (100\% = all).}",
                 r"schedule & seeds & change point t & test accuracy (\%) & note \\",
                 r"GAWU & 3 & 11, 11, 10 & 91.24 $\pm$ 0.45 &  \\"):
        assert part in tex
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["table_1.csv", "table_1.md", "table_1.tex"]


def test_table_without_notes_drops_the_column_and_refuses_running_runs(runs, tmp_path, monkeypatch):
    df = tables.schedule_table([("WU (t = 10)", [runs["wu10"][0][0]])])
    assert tables.to_markdown(df, "c").splitlines()[2] == "| schedule | seeds | change point t | test accuracy (%) |"

    running = tmp_path / "running.h5"
    store.TrajectoryWriter.create(running, {"optimizer": "sgd"}, n_params=2, n_train=4, lags=1).close()
    with pytest.raises(ZigzagError, match="training is still running; finish it"):
        tables.schedule_table([("x", [str(running)])])

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tables, "to_latex", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        tables.write_table(df, str(tmp_path / "out" / "t"), "c")
    assert list((tmp_path / "out").iterdir()) == []
