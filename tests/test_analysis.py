"""Analysis against a brute force from raw gradients, and on constructed sequences."""

import h5py
import numpy as np
import pytest
import torch
from conftest import zigzag_main

from zigzag import analysis, store
from zigzag.lagstats import LagRing
from zigzag.schedules import GAWU


def lag_stats(grads, lags):
    ring = LagRing(grads.shape[1], lags)
    rows = [ring.push(torch.as_tensor(g, dtype=torch.float32)) for g in grads]
    return np.stack([r[0].numpy() for r in rows]), np.stack([r[1].numpy() for r in rows])


def cos(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def brute_sign_shares(grads):
    """The h x h matrices of the share of opposite signs among entries non-zero in both and of the overlap
    sum_i |g_a[i] g_b[i]| the opposite entries carry, in float64 from the gradients of a window."""
    g = grads.astype(np.float64)
    h = len(g)
    nonzero, weight = np.empty((h, h)), np.empty((h, h))
    for a in range(h):
        for b in range(h):
            product = g[a] * g[b]
            nonzero[a, b] = np.mean(product[product != 0] < 0)
            weight[a, b] = -product[product < 0].sum() / np.abs(product).sum()
    return nonzero, weight


def test_analyze_cli_matches_brute_force_from_raw_gradients(tiny_dataset, tmp_path, capsys):
    traj = tmp_path / "traj.h5"
    zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.3",
                "--steps", "14", "--lags", "5", "--micro-batch", "48", "--raw-gradients", "every:1", "--device", "cpu",
                "--out", traj)
    with h5py.File(traj, "r") as f:
        raw = f["raw/gradients"][()].astype(np.float64)
    for h in (3, 6):
        out = tmp_path / f"a{h}.h5"
        # the last window ends at 13
        zigzag_main(capsys, "analyze", traj, "--out", out, "--h", h, "--windows", f"0,4,{14 - h}")
        result = store.read_analysis(out)
        brute_mean = [np.mean([cos(raw[k + m - 1], raw[k + m]) for m in range(1, h)]) for k in range(14 - h + 1)]
        np.testing.assert_allclose(result.mean_mu[: 14 - h + 1], brute_mean, rtol=1e-5, atol=1e-6)
        assert np.isnan(result.mean_mu[14 - h + 1:]).all()
        assert result.window_steps.tolist() == sorted({0, 4, 14 - h})
        for e, k in enumerate(result.window_steps):
            corr = [[cos(raw[k + a], raw[k + b]) for b in range(h)] for a in range(h)]
            opp = [[np.mean(raw[k + a] * raw[k + b] < 0) for b in range(h)] for a in range(h)]
            np.testing.assert_allclose(result.window_corr[e], corr, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(result.window_opposite[e], opp, atol=1e-12)
            nonzero, weight = brute_sign_shares(raw[k: k + h])
            np.testing.assert_allclose(result.window_opposite_nonzero[e], nonzero, atol=1e-12)
            np.testing.assert_allclose(result.window_opposite_weight[e], weight, rtol=1e-5, atol=1e-6)
        assert result.h == h and result.format_version == store.FORMAT_VERSION


def test_alternating_gradients_are_zigzag_with_full_sign_shift():
    g = np.random.default_rng(0).standard_normal(50)
    dot, opp = lag_stats(np.stack([g * (-1) ** k for k in range(10)]), lags=4)
    result = analysis.analyze({"dot": dot, "opposite": opp, "loss": np.linspace(2, 1, 10)}, 5, [2], 0.5, -0.5)
    np.testing.assert_allclose(result.mean_mu[:6], -1.0, atol=1e-6)
    assert (result.phase[:6] == analysis.ZIGZAG).all() and (result.phase[6:] == analysis.UNDEFINED).all()
    expected = np.fromfunction(lambda a, b: (-1.0) ** (a + b), (5, 5))
    np.testing.assert_allclose(result.window_corr[0], expected, atol=1e-6)
    np.testing.assert_array_equal(result.window_opposite[0], (expected < 0).astype(float))


def test_the_three_sign_shift_windows_match_brute_force_and_an_older_trajectory_gives_nan(tmp_path):
    """Gradients with exact zeros (whole blocks and single entries): each window matrix of the three counts is
    the brute force's; a trajectory without the later series gets all-NaN matrices, kept through the file."""
    rng = np.random.default_rng(5)
    grads = rng.standard_normal((12, 40)) * rng.exponential(1.0, (12, 40))
    grads[:, :8] = 0.0
    grads[rng.random((12, 40)) < 0.2] = 0.0
    grads[1::2] *= -0.5 + rng.random((6, 40))  # mostly flipped, not all: the three counts differ
    ring = LagRing(grads.shape[1], 4)
    rows = [ring.push(torch.as_tensor(g, dtype=torch.float32)) for g in grads.astype(np.float32)]
    steps = {name: np.stack([getattr(r, name).numpy() for r in rows]) for name in store.LAG_SERIES}
    steps["loss"] = np.linspace(2, 1, 12)
    result = analysis.analyze(steps, 5, [0, 3, 7, 9], 0.5, -0.5)
    g32 = grads.astype(np.float32)
    for e, k in enumerate([0, 3, 7]):
        nonzero, weight = brute_sign_shares(g32[k: k + 5])
        np.testing.assert_allclose(result.window_opposite_nonzero[e], nonzero, atol=1e-12)
        np.testing.assert_allclose(result.window_opposite_weight[e], weight, rtol=1e-6, atol=1e-9)
        assert not np.allclose(result.window_opposite[e], nonzero)  # the zeros make them differ
    assert np.isnan(result.window_opposite_nonzero[3]).all() and np.isnan(result.window_opposite_weight[3]).all()

    older = {name: values for name, values in steps.items() if name not in store.LATER_LAG_SERIES}
    old_result = analysis.analyze(older, 5, [0, 3], 0.5, -0.5)
    np.testing.assert_array_equal(old_result.window_opposite, result.window_opposite[:2])
    assert np.isnan(old_result.window_opposite_nonzero).all() and np.isnan(old_result.window_opposite_weight).all()
    store.write_analysis(tmp_path / "a.h5", old_result, {"h": 5}, {"status": "completed"})
    kept = store.read_analysis(tmp_path / "a.h5")
    assert kept.window_opposite_weight.shape == (2, 5, 5) and np.isnan(kept.window_opposite_weight).all()


def test_phases_transitions_and_loss_share_on_a_constructed_run():
    mean = np.array([0.9, 0.8, -0.9, -0.95, 0.1, 0.0, np.nan])
    phase = analysis.phases(mean, 0.5, -0.5)
    assert phase.tolist() == [0, 0, 1, 1, 2, 2, -1]
    assert analysis.transitions(phase) == [(2, "smooth", "zigzag"), (4, "zigzag", "random")]
    loss = np.array([10.0, 9.0, 8.0, 5.0, 2.0, 1.5, 1.0])
    # zigzag steps 2 and 3 make (8-5) + (5-2) = 6 of the total 9.
    assert analysis.zigzag_loss_share(loss, phase) == pytest.approx(6 / 9)
    assert np.isnan(analysis.zigzag_loss_share(np.array([1.0, 2.0]), np.array([1, 1])))


@pytest.mark.parametrize("steps_per_unit", [1, 3])
def test_online_change_point_agrees_with_the_gawu_scheduler(steps_per_unit):
    """The trainer's way: one adjacent cosine per step into GAWU's monitor, ``step()`` once per unit."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal(40)
    grads = [g + 0.1 * rng.standard_normal(40) for _ in range(8)]
    grads += [(-1) ** k * g + rng.standard_normal(40) for k in range(22)]
    dot, _ = lag_stats(np.stack(grads), lags=4)
    adjacent = analysis.adjacent_mu(dot)
    expected = analysis.online_change_point(adjacent, 5, steps_per_unit)
    param = torch.nn.Parameter(torch.zeros(40))
    optimizer = torch.optim.SGD([param], lr=1.0)
    sched = GAWU(optimizer, eta0=1e-3, omega=0.1, total=len(grads) // steps_per_unit)
    for k in range(len(grads)):
        if k > 0:
            sched.monitor.add_cosine(float(adjacent[k]))
        if (k + 1) % steps_per_unit == 0:
            optimizer.step()
            sched.step()
    assert expected is not None and sched.change_point == expected


def test_change_point_rule_units_and_window():
    """Steps 0..11, 3 per unit: means are read only at unit ends (steps 2, 5, 8, 11) with GAWU's h."""
    adjacent = np.array([np.nan, 1, 1, 1, -1, -1, 1, -1, -1, -1, -1, -1], dtype=float)
    # h = 3 at step k: mean of adjacent[k-1], adjacent[k]. Unit ends: 2 -> +1 (armed), 5 -> -1: unit 1.
    assert analysis.online_change_point(adjacent, 3, steps_per_unit=3) == 1
    # Read at every step (unit = iteration) the mean is 0 at step 4 and -1 at step 5: t = step 5.
    assert analysis.online_change_point(adjacent, 3, steps_per_unit=1) == 5
    assert analysis.online_change_point(adjacent, 3, steps_per_unit=3, max_warmup=0) == 0
    assert analysis.online_change_point(np.ones(12), 3, steps_per_unit=3) is None
    rule = analysis.change_point_rule({"kind": "gawu", "h": 3, "unit": "epoch", "max_warmup": 9}, 4)
    assert rule == {"h": 3, "unit": "epoch", "steps_per_unit": 4, "max_warmup": 9}
    a = analysis.analyze({"dot": np.column_stack([np.ones(12), np.r_[np.nan, adjacent[1:]]]),
                          "opposite": np.zeros((12, 2)), "loss": np.ones(12)}, 2, [], 0.5, -0.5,
                         schedule={"kind": "gawu", "h": 3, "unit": "iteration"}, batches_per_epoch=3)
    assert (a.change_point_step, a.change_point_epoch) == (5, 1)


def test_h_beyond_lags_is_refused(tiny_dataset, tmp_path, capsys):
    traj = tmp_path / "traj.h5"
    zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.25", "--lr", "0.1",
                "--steps", "3", "--lags", "2", "--device", "cpu", "--out", traj)
    result = zigzag_main(capsys, "analyze", traj, "--out", tmp_path / "a.h5", "--h", "5", check=False)
    assert result.returncode == 2 and "h=5" in result.stderr and not (tmp_path / "a.h5").exists()


def test_edge_of_stability_step_and_zigzag_onset():
    sharp = np.array([np.nan, 5.0, np.nan, 17.0, 19.5, 25.0])
    lr = np.full(6, 0.1)  # 2/lr = 20
    assert analysis.edge_of_stability_step(sharp, lr, 0.1) == 4  # threshold 18: 17 < 18 <= 19.5
    assert analysis.edge_of_stability_step(sharp, lr, 0.0) == 5
    assert analysis.edge_of_stability_step(sharp, lr, 0.2) == 3
    assert analysis.edge_of_stability_step(np.full(3, np.nan), np.full(3, 0.1), 0.1) is None
    assert analysis.zigzag_onset(np.array([-1, 0, 2, 1, 1, 0])) == 3
    assert analysis.zigzag_onset(np.array([0, 0])) is None


def test_mean_mu_is_eq3_and_a_nan_blanks_only_the_windows_containing_it():
    """Brute-force eq. (3) on a random sequence; a NaN planted in dot makes NaN exactly the windows that
    contain it (cumulative sums made every later window NaN)."""
    rng = np.random.default_rng(5)
    dot, _ = lag_stats(rng.standard_normal((30, 64)), lags=4)
    h, j = 5, 12
    dot[j, 1] = np.nan  # mu(j-1, j) undefined
    got = analysis.mean_mu(dot, h)
    norms = np.sqrt(dot[:, 0])
    pair = [np.nan] + [dot[i, 1] / (norms[i] * norms[i - 1]) for i in range(1, 30)]  # mu(i-1, i)
    expected = [np.mean([pair[k + m] for m in range(1, h)]) for k in range(30 - h + 1)]
    np.testing.assert_allclose(got[: 30 - h + 1], expected, rtol=1e-12, atol=0)  # NaN where expected is
    assert np.isnan(got[30 - h + 1:]).all()
    blank = np.flatnonzero(np.isnan(got[: 30 - h + 1]))
    assert blank.tolist() == list(range(j - h + 1, j))  # the h-1 windows [k, k+h-1] holding the pair (j-1, j)
    dot[j, 0] = np.nan  # |g_j| undefined: both pairs (j-1, j) and (j, j+1), the h windows that contain step j
    assert np.flatnonzero(np.isnan(analysis.mean_mu(dot, h)[: 30 - h + 1])).tolist() == list(range(j - h + 1, j + 1))


def test_auto_windows_rule_on_a_constructed_mean_mu():
    """zigzag: the lowest mean_mu; smooth: middle of the longest smooth run before it (else the longest);
    late: the last defined step."""
    m = np.array([0.9, 0.8, 0.1, 0.7, 0.9, 0.95, 0.6, -0.6, -0.9, -0.7, 0.9, 0.9, 0.9, 0.9, 0.9, 0.3, np.nan])
    phase = analysis.phases(m, 0.5, -0.5)
    assert analysis.auto_windows(m, phase) == {"smooth": 4, "zigzag": 8, "late": 15}
    first = np.array([-0.9, -0.6, 0.9, 0.9, 0.9, np.nan])  # zigzag first (a ResNet): the smooth run after it
    assert analysis.auto_windows(first, analysis.phases(first, 0.5, -0.5)) == {"zigzag": 0, "smooth": 3, "late": 4}
    flat = np.array([0.1, 0.0, -0.2, np.nan])  # neither smooth nor zigzag: only the late window
    assert analysis.auto_windows(flat, analysis.phases(flat, 0.5, -0.5)) == {"late": 2}
    result = analysis.analyze({"dot": np.ones((6, 3)), "opposite": np.zeros((6, 3)), "loss": np.ones(6)}, 3, [0],
                              0.5, -0.5, auto=True)  # constant gradients: smooth everywhere, steps 0..3 defined
    assert result.window_steps.tolist() == [0, 1, 3] and result.window_roles == ["", "smooth", "late"]


@pytest.mark.parametrize("seed", [1, 2])
def test_analyze_finds_windows_that_lie_in_their_phase_on_real_runs(tiny_dataset, tmp_path, seed, capsys):
    """`zigzag analyze` without --windows keeps the windows it finds; on real runs (seeds nobody picked steps
    on) each lies in the phase it is named after: phase[k] (the phase of mean_mu_k, the mean over exactly
    the window [k, k+h-1]) is that phase, the zigzag one is the deepest, the late one the last defined."""
    traj, out = tmp_path / "traj.h5", tmp_path / "a.h5"
    zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.3",
                "--steps", "30", "--lags", "5", "--micro-batch", "96", "--seed", seed, "--device", "cpu", "--quiet",
                "--out", traj)
    printed = zigzag_main(capsys, "analyze", traj, "--out", out, "--h", "5").stdout
    result = store.read_analysis(out)
    roles = dict(zip(result.window_roles, result.window_steps.tolist()))
    phase, m = result.phase, result.mean_mu
    assert {"zigzag", "late"} <= set(roles) and "windows found: " in printed
    if "smooth" in roles:
        assert phase[roles["smooth"]] == analysis.SMOOTH
    assert phase[roles["zigzag"]] == analysis.ZIGZAG and m[roles["zigzag"]] == np.nanmin(m)
    assert roles["late"] == 30 - 5 and np.isnan(m[roles["late"] + 1:]).all()
    for e, k in enumerate(result.window_steps):  # the matrices are those windows
        corr = analysis.window(store.read_trajectory(traj).steps["dot"], int(k), 5, True)
        np.testing.assert_allclose(result.window_corr[e], corr)
