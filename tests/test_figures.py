"""Figures from small trajectories and analyses written through the real store and analysis."""

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from zigzag import analysis, figures, store
from zigzag.errors import ZigzagError

H, LAGS = 5, 4


def write_run(folder, grads, *, optimizer="gd", windows=(0, 4), diverged_at=None, auto=False):
    """A trajectory with exact lag statistics of ``grads`` and its analysis (h = 5); returns both paths."""
    traj_path, analysis_path = folder / "trajectory.h5", folder / "analysis.h5"
    writer = store.TrajectoryWriter.create(traj_path, {"optimizer": optimizer, "model": "cnn"},
                                           n_params=grads.shape[1], n_train=10, lags=LAGS)
    for k, g in enumerate(grads):
        lag_rows = {name: np.full(LAGS + 1, np.nan) for name in store.LAG_SERIES}
        for lag in range(min(k, LAGS) + 1):
            product = g * grads[k - lag]
            lag_rows["dot"][lag] = g @ grads[k - lag]
            lag_rows["opposite"][lag] = np.mean(product < 0)
            lag_rows["opposite_nonzero"][lag] = np.mean(product[product != 0] < 0)
            lag_rows["opposite_weight"][lag] = -product[product < 0].sum() / np.abs(product).sum()
        loss = 2.0 * 0.8 ** k
        if k == diverged_at:  # as the trainer records it: a non-finite loss and gradient
            loss, lag_rows["dot"][:] = np.nan, np.nan
        writer.append({"loss": loss, "epoch": k, **lag_rows})
    if diverged_at is None:
        writer.finish("completed")
    else:
        writer.finish("diverged", diverged_at=diverged_at)
    traj = store.read_trajectory(traj_path)
    result = analysis.analyze(traj.steps, H, list(windows), 0.5, -0.5, auto=auto)
    store.write_analysis(analysis_path, result, {"h": H, "windows": list(windows)}, traj.attrs)
    return str(traj_path), str(analysis_path)


def alternating(n_steps, n_params=30):
    g = np.random.default_rng(0).standard_normal(n_params)
    return np.stack([g * (-1) ** k for k in range(n_steps)])


def texts(ax):
    return [t.get_text() for t in ax.texts]


def matrix_axes(fig):
    return [ax for ax in fig.axes if ax.images or "not reached" in texts(ax)]


def test_trajectory_figure_of_an_alternating_run(tmp_path):
    traj, an = write_run(tmp_path, alternating(12), windows=(0, 4))
    fig = figures.build_trajectory_figure(traj, an, "alternating", label="g, -g, g, ...")
    mats = matrix_axes(fig)
    assert [ax.get_title() for ax in mats] == ["epoch 0", "epoch 4"]
    for ax in mats:
        (image,) = ax.images
        assert image.get_clim() == (-1.0, 1.0)
        assert texts(ax).count("-1.00") == 12 and texts(ax).count("1.00") == 13  # 5 x 5, (-1)^(a+b)
    assert [t.get_text() for t in mats[1].get_xticklabels()] == ["4", "5", "6", "7", "8"]
    loss_ax, mu_ax = fig.axes[:2]
    assert loss_ax.get_yscale() == "log" and loss_ax.get_xlabel() == "epoch"
    assert mu_ax.get_ylim() == (-1.05, 1.05)
    np.testing.assert_allclose(mu_ax.get_lines()[-1].get_ydata()[:8], -1.0, atol=1e-12)
    assert "DIVERGED" not in fig.get_suptitle()

    png, pdf = tmp_path / "out" / "fig.png", tmp_path / "out" / "fig.pdf"
    figures.render("trajectory", [traj, an], "alternating", str(png), str(pdf))
    image = matplotlib.image.imread(png)
    assert image.shape[1] == 10 * figures.DPI and image.shape[0] == round(7.2 * figures.DPI)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 10_000
    assert sorted(p.name for p in png.parent.iterdir()) == ["fig.pdf", "fig.png"]


def test_diverged_sgd_run_is_marked_and_a_window_past_the_end_is_not_reached(tmp_path):
    traj, an = write_run(tmp_path, alternating(7), optimizer="sgd", windows=(2, 8), diverged_at=6)
    fig = figures.build_trajectory_figure(traj, an, "sgd run")
    assert "DIVERGED at step 6" in fig.get_suptitle()
    for ax in fig.axes[:2]:
        assert ax.get_xlabel() == "iteration"
        assert any(line.get_linestyle() == "--" and list(line.get_xdata()) == [6, 6] for line in ax.get_lines())
    reached, past = matrix_axes(fig)
    # the window holds step 6 (NaN)
    assert reached.get_title() == "iteration 2" and texts(reached).count("n/a") == 2 * H - 1
    assert past.get_title() == "iteration 8" and texts(past) == ["not reached"] and not past.images


def test_sign_shift_figure_annotates_correlation_and_opposite_signs(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _, zig = write_run(tmp_path / "a", alternating(12), windows=(0, 5))
    _, past = write_run(tmp_path / "b", alternating(7), windows=(4,), diverged_at=6)
    fig = figures.build_sign_shift_figure([(zig, "(a) CNN", 5), (past, "(b) diverged", 4)], "sign shift")
    zig_ax, past_ax = fig.axes[:2]
    assert zig_ax.get_title() == "(a) CNN (epoch 5)" and zig_ax.images[0].get_clim() == (-1.0, 1.0)
    cells = np.array(texts(zig_ax)).reshape(H, H)
    assert cells[0, 1] == cells[3, 2] == "-1.00\n100%"  # lag 1: opposite gradients, every entry flips
    assert cells[0, 2] == "1.00\n0%" and all(cells[a, a] == "1.00\n0%" for a in range(H))
    assert "DIVERGED at step 6" in past_ax.get_title() and texts(past_ax) == ["not reached"]
    assert zig_ax.get_xlabel() == "all entries: 100%\nnon-zero in both: 100%\nmagnitude-weighted: 100%"
    assert past_ax.get_xlabel() == ""

    png, pdf = tmp_path / "sign.png", tmp_path / "sign.pdf"
    figures.render("sign_shift", [(zig, "(a) CNN", 5)], "sign shift", str(png), str(pdf))
    assert matplotlib.image.imread(png).shape[:2] == (round(4.8 * figures.DPI), round(5.3 * figures.DPI))
    assert pdf.read_bytes().startswith(b"%PDF")


def test_sign_shift_figure_shows_the_three_sign_flip_counts_of_the_adjacent_pairs(tmp_path):
    """Gradients with exact zeros that flip most, not all, of their entries at every step: below the panel, the
    median over the window's adjacent pairs of each count, equal to the analysis's and the trajectory's."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal(60) * rng.exponential(1.0, 60)
    g[:15] = 0.0
    flips = [np.where(rng.random(60) < 0.7, -1.0, 1.0) for _ in range(10)]
    grads = np.stack([g * np.prod(flips[:k + 1], axis=0) * (1 + 0.1 * rng.random(60)) for k in range(10)])
    grads[rng.random(grads.shape) < 0.1] = 0.0
    traj_path, an_path = write_run(tmp_path, grads, windows=(2,))
    fig = figures.build_sign_shift_figure([(an_path, "(a)", 2)], "sign shift")
    an, steps = store.read_analysis(an_path), store.read_trajectory(traj_path).steps
    shown = fig.axes[0].get_xlabel().split("\n")
    assert [line.split(": ")[0] for line in shown] == ["all entries", "non-zero in both", "magnitude-weighted"]
    for line, field, series in zip(shown, figures.SIGN_COUNTS, store.SHARE_SERIES):
        from_analysis = np.median(np.diag(getattr(an, field)[0], 1))
        assert from_analysis == pytest.approx(np.median(steps[series][3:2 + H, 1]), abs=1e-12)
        assert line.split(": ")[1] == f"{100 * from_analysis:.0f}%"
    assert len(set(shown_values := [line.split(": ")[1] for line in shown])) == 3, shown_values  # they differ
    legend = fig.get_supxlabel()
    assert all(f"{label}:" in legend for label in figures.SIGN_COUNTS.values()) and "paper's wording" in legend


def test_a_step_that_is_not_a_window_is_refused(tmp_path):
    _, an = write_run(tmp_path, alternating(12), windows=(0, 4))
    with pytest.raises(ZigzagError, match=r"step 3 is not an analysed window \(available: 0, 4\)"):
        figures.render("sign_shift", [(an, "x", 3)], "t", str(tmp_path / "s.png"), str(tmp_path / "s.pdf"))
    assert not (tmp_path / "s.png").exists()


def test_a_failed_render_leaves_no_file(tmp_path, monkeypatch):
    traj, an = write_run(tmp_path, alternating(12))
    real_savefig = Figure.savefig

    def savefig(self, path, format, **kwargs):
        if format == "pdf":
            raise RuntimeError("disk full")
        real_savefig(self, path, format=format, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        figures.render("trajectory", [traj, an], "t", str(out / "f.png"), str(out / "f.pdf"))
    assert list(out.iterdir()) == []


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("windows", [(), (20,)])
def test_a_run_without_windows_to_mark_renders_cleanly(tmp_path, windows):
    traj, an = write_run(tmp_path, alternating(8), windows=windows)
    figures.render("trajectory", [traj, an], "no windows", str(tmp_path / "f.png"), str(tmp_path / "f.pdf"))
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_auto_steps_draw_the_windows_the_analysis_found(tmp_path):
    """steps auto: the found windows, titled by role; Fig. 8 step auto: the deepest zigzag window, grey if none."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    g = np.random.default_rng(1).standard_normal(30)
    grads = np.stack([g] * 6 + [g * (-1) ** k for k in range(8)])  # smooth, then zigzag
    traj, an = write_run(tmp_path / "a", grads, windows=(0,), auto=True)
    fig = figures.build_trajectory_figure(traj, an, "t", steps=["auto"])
    titles = [ax.get_title() for ax in matrix_axes(fig)]
    # mean_mu: +1 at 0..2, 0.5, 0, -0.5 at 3..5 (random), -1 from 6 on (the first is the deepest); last: 14 - 5
    assert titles == ["epoch 1 (smooth)", "epoch 6 (zigzag)", "epoch 9 (late)"]
    assert [ax.get_title() for ax in matrix_axes(figures.build_trajectory_figure(traj, an, "t", steps=[0]))] \
        == ["epoch 0"]
    _, flat = write_run(tmp_path / "b", np.stack([g] * 8), windows=(), auto=True)
    fig = figures.build_sign_shift_figure([(an, "(a)", "auto"), (flat, "(b)", "auto")], "sign shift")
    assert fig.axes[0].get_title() == "(a) (epoch 6)" and "no zigzag phase" in fig.axes[1].get_title()


def test_a_trajectory_figure_without_a_zigzag_phase_says_so(tmp_path):
    """Random, then smooth (as VGG-16 at lr 0.1): the correlation panel names the missing phase and the phase
    diagram; an alternating run's figure carries no such note."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    rng = np.random.default_rng(3)
    g = rng.standard_normal(30)
    grads = np.concatenate([rng.standard_normal((6, 30)), np.stack([g] * 8)])
    traj, an = write_run(tmp_path / "a", grads, windows=(0,))
    assert analysis.ZIGZAG not in store.read_analysis(an).phase
    mu_ax = figures.build_trajectory_figure(traj, an, "random, then smooth").axes[1]
    (note,) = [text for text in texts(mu_ax) if "zigzag" in text]
    assert "no zigzag phase in this run" in note and "zigzag_below = -0.5" in note
    assert "learning-rate phase diagram (all_sweeps)" in note
    traj, an = write_run(tmp_path / "b", alternating(12), windows=(0,))
    fig = figures.build_trajectory_figure(traj, an, "alternating")
    assert not any("no zigzag" in text for ax in fig.axes for text in texts(ax))


def test_lag1_figure_draws_the_adjacent_correlation_of_every_seed_from_trajectories_alone(tmp_path):
    """Two seeds: g, -g, g, ... (mu(k-1, k) = -1) and a constant gradient (+1): mean 0, sample sd sqrt(2)."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    zig, _ = write_run(tmp_path / "a", alternating(10))
    flat, _ = write_run(tmp_path / "b", np.stack([np.random.default_rng(2).standard_normal(30)] * 8))
    fig = figures.build_lag1_figure([("zigzag", [(zig,)]), ("two seeds", [(zig,), (flat,)])], "lag 1")
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    np.testing.assert_allclose(lines[0].get_ydata()[1:], -1.0, atol=1e-12)
    assert np.isnan(lines[0].get_ydata()[0]) and len(lines[1].get_xdata()) == 8  # seeds cut to 8 steps
    np.testing.assert_allclose(lines[1].get_ydata()[1:], 0.0, atol=1e-12)
    (band,) = ax.collections
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].max(), np.sqrt(2.0), atol=1e-9)
    assert ax.get_ylim() == (-1.05, 1.05) and "common first 8 steps" in fig._supxlabel.get_text()

    png, pdf = tmp_path / "lag1.png", tmp_path / "lag1.pdf"
    figures.render("lag1", [("zigzag", [(zig,)])], "lag 1", str(png), str(pdf))
    assert png.stat().st_size > 10_000 and pdf.read_bytes().startswith(b"%PDF")


def test_lag1_figure_through_the_command_line(tmp_path):
    from zigzag import cli

    (tmp_path / "a").mkdir()
    zig, _ = write_run(tmp_path / "a", alternating(10))
    png, pdf = tmp_path / "f.png", tmp_path / "f.pdf"
    assert cli.main(["figure", "lag1", "--curve", "two seeds", zig, zig, "--title", "t", "--png", str(png),
                     "--pdf", str(pdf)]) == 0
    assert png.stat().st_size > 10_000


def test_layers_figure_groups_tensors_by_module_and_counts_the_layers_below_the_threshold(tmp_path, tiny_dataset,
                                                                                          capsys):
    """A run with --per-layer: per module, the adjacent correlation from its tensors' summed dots, the zigzag pairs
    from the analysis's phases, the fractions of layers and parameters; the figure renders, and a run without
    per-layer statistics is refused in one line."""
    from conftest import zigzag_main

    from zigzag.layers import load_layers, zigzag_pair_ends

    traj_path, an_path = tmp_path / "run.h5", tmp_path / "analysis.h5"
    common = ["--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.5", "--steps", "12",
              "--lags", "2", "--micro-batch", "48", "--device", "cpu", "--quiet"]
    zigzag_main(capsys, "train", *common, "--per-layer", "--out", traj_path)
    zigzag_main(capsys, "analyze", traj_path, "--out", an_path, "--h", "3", "--windows", "none")
    traj, an = store.read_trajectory(traj_path), store.read_analysis(an_path)
    data = load_layers(str(traj_path), str(an_path))
    names = list(traj.attrs["layer_names"])
    assert data.names == list(dict.fromkeys(name.rpartition(".")[0] for name in names))
    rows = [i for i, name in enumerate(names) if name.rpartition(".")[0] == data.names[1]]
    dot = traj.steps["layer_dot"][:, rows].sum(1)
    np.testing.assert_allclose(data.adjacent_mu[1, 1:], dot[1:, 1] / np.sqrt(dot[1:, 0] * dot[:-1, 0]))
    assert data.sizes.sum() == traj.attrs["n_params"]
    phase = np.array([analysis.ZIGZAG if k == 4 else analysis.SMOOTH for k in range(8)])
    assert np.flatnonzero(zigzag_pair_ends(phase, 3)).tolist() == [5, 6]
    pairs = zigzag_pair_ends(an.phase, an.h)
    assert (data.zigzag_pairs == pairs).all()
    if pairs.any():
        below = np.nanmean(data.adjacent_mu[:, pairs], axis=1) < an.zigzag_below
        assert data.fractions() == (below.mean(), data.sizes[below].sum() / data.sizes.sum())
    else:
        assert np.isnan(data.fractions()).all()
    fig = figures.build_layers_figure(str(traj_path), str(an_path), "layers")
    assert "of the parameters" in fig._suptitle.get_text() or "no zigzag" in fig._suptitle.get_text()
    zigzag_main(capsys, "train", *common, "--out", tmp_path / "plain.h5")
    zigzag_main(capsys, "analyze", tmp_path / "plain.h5", "--out", tmp_path / "plain.analysis.h5", "--h", "3",
                "--windows", "none")
    with pytest.raises(ZigzagError, match="per_layer"):
        load_layers(str(tmp_path / "plain.h5"), str(tmp_path / "plain.analysis.h5"))
