"""The public Recorder in a loop of one's own: what it stores equals what the gradients give by brute force."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import zigzag_main

from zigzag import store
from zigzag.models import build_model


@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_loop_of_ones_own_gets_the_lag_statistics_of_its_gradients(tmp_path, set_to_none, capsys):
    from zigzag import Recorder

    torch.manual_seed(0)
    model = build_model("cnn", width=0.25, in_channels=1, image_size=16, batch_norm=False)
    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    lags, steps, gradients, losses = 3, 7, [], []
    with Recorder(tmp_path / "run.h5", model, lags=lags, raw_steps={2, 5}) as recorder:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=set_to_none)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            gradients.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy())
            losses.append(loss.item())
            recorder.record(loss=loss.item(), lr=0.2)
            optimizer.step()
    traj = store.read_trajectory(tmp_path / "run.h5")
    assert traj.attrs["status"] == "completed" and traj.attrs["lags"] == lags
    np.testing.assert_allclose(traj.steps["loss"], losses)
    g = np.array(gradients)
    for k in range(steps):
        assert traj.steps["grad_norm"][k] == pytest.approx(np.linalg.norm(g[k]), rel=1e-6)
        for lag in range(lags + 1):
            if lag > k:
                assert all(np.isnan(traj.steps[name][k, lag]) for name in store.LAG_SERIES)
                continue
            product = g[k] * g[k - lag]
            assert traj.steps["dot"][k, lag] == pytest.approx(g[k] @ g[k - lag], rel=1e-6)
            assert traj.steps["opposite"][k, lag] == np.mean(product < 0)
            assert traj.steps["opposite_nonzero"][k, lag] == pytest.approx(
                np.sum(product < 0) / np.sum((g[k] != 0) & (g[k - lag] != 0)), abs=1e-12)
            assert traj.steps["opposite_weight"][k, lag] == pytest.approx(  # float32 blocks: 1e-6 of the overlap
                np.abs(product[product < 0]).sum() / np.abs(product).sum(), rel=1e-6, abs=1e-6)
    assert (g == 0).mean() > 0.05, "the ReLU network's gradient has exact zeros: the counts differ"
    with store.open_file(tmp_path / "run.h5", store.TRAJECTORY) as f:
        assert list(f["raw/steps"][()]) == [2, 5]
        np.testing.assert_allclose(f["raw/gradients"][()], g[[2, 5]], rtol=1e-6)
        assert f.attrs["total_steps"] == steps
    zigzag_main(capsys, "analyze", tmp_path / "run.h5", "--out", tmp_path / "analysis.h5", "--h", "3",
                "--windows", "none")
    mu = store.read_analysis(tmp_path / "analysis.h5").mean_mu
    assert len(mu) == steps and np.isfinite(mu[: steps - 2]).all()  # windows of h = 3 steps from k on


def test_an_exception_in_the_loop_leaves_the_file_unfinished_with_what_was_recorded(tmp_path):
    from zigzag import Recorder

    model = torch.nn.Linear(4, 2)
    with pytest.raises(RuntimeError, match="stop"), Recorder(tmp_path / "run.h5", model, lags=1) as recorder:
        for k in range(3):
            model(torch.ones(1, 4)).sum().backward()
            recorder.record(loss=float(k), lr=0.1)
        raise RuntimeError("stop")
    with store.open_file(tmp_path / "run.h5", store.TRAJECTORY) as f:
        assert f.attrs["status"] == "running"
        assert list(f["steps/loss"][()]) == [0.0, 1.0, 2.0]


def test_importing_zigzag_does_not_import_torch_for_the_recorder():
    check = "import sys, zigzag; assert 'torch' not in sys.modules; zigzag.Recorder; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_a_recorded_file_has_the_arithmetic_fingerprint_and_the_selected_parameters(tmp_path, capsys):
    import json

    from zigzag import Recorder

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    thetas = []
    with Recorder(tmp_path / "run.h5", model, lags=1, parameter_steps={0, 2}) as recorder:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.ones(1, 4)).sum().backward()
            thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy())
            recorder.record(loss=0.0, lr=0.5)
            optimizer.step()
    traj = store.read_trajectory(tmp_path / "run.h5")
    found = json.loads(traj.attrs["arithmetic"])
    assert found["threads"] == torch.get_num_threads() and found["torch"] == torch.__version__
    assert found["deterministic"] == torch.are_deterministic_algorithms_enabled()
    assert isinstance(found["cpu"]["flags"], list) and found["build"]
    with store.open_file(tmp_path / "run.h5", store.TRAJECTORY) as f:
        assert list(f["raw/parameter_steps"][()]) == [0, 2] and "gradients" not in f["raw"]
        np.testing.assert_array_equal(f["raw/parameters"][()], np.array(thetas)[[0, 2]])
    shown = zigzag_main(capsys, "inspect", tmp_path / "run.h5").stdout
    assert "  arithmetic:" in shown and f"    threads: {torch.get_num_threads()}" in shown
    assert f'    torch: "{torch.__version__}"' in shown


def test_per_layer_statistics_of_a_loop_of_ones_own_match_the_gradients_of_each_tensor(tmp_path):
    """``Recorder(per_layer=True)``: per trainable tensor (a frozen one left out), the dot and the opposite-sign
    share of its slice of g_k against g_(k-l), as float64 NumPy gives them, with the names and sizes stored."""
    from zigzag import Recorder

    torch.manual_seed(1)
    model = build_model("cnn", width=0.25, in_channels=1, image_size=16, batch_norm=True)
    frozen = next(p for name, p in model.named_parameters() if name.endswith("bias"))
    frozen.requires_grad_(False)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    x, y = torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))
    optimizer = torch.optim.SGD([p for _, p in named], lr=0.3)
    lags, steps, gradients = 2, 5, []
    with Recorder(tmp_path / "run.h5", model, lags=lags, per_layer=True) as recorder:
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            gradients.append([p.grad.double().reshape(-1).numpy().copy() for _, p in named])
            recorder.record(loss=0.0, lr=0.3)
            optimizer.step()
    traj = store.read_trajectory(tmp_path / "run.h5")
    assert list(traj.attrs["layer_names"]) == [name for name, _ in named]
    assert traj.attrs["layer_sizes"].tolist() == [p.numel() for _, p in named]
    for k in range(steps):
        for t in range(len(named)):
            for lag in range(lags + 1):
                if lag > k:
                    assert np.isnan(traj.steps["layer_dot"][k, t, lag]) and np.isnan(
                        traj.steps["layer_opposite"][k, t, lag])
                    continue
                a, b = gradients[k][t], gradients[k - lag][t]
                assert traj.steps["layer_dot"][k, t, lag] == pytest.approx(  # float32 sums: 1e-6 of |a| |b|
                    a @ b, abs=1e-6 * np.linalg.norm(a) * np.linalg.norm(b))
                assert traj.steps["layer_opposite"][k, t, lag] == np.mean(a * b < 0)
