"""The public Recorder in a loop of one's own: what it stores equals what the gradients give by brute force."""

import copy
import json
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``zigzag train`` on the tiny dataset: full-batch GD, 4 steps, sharpness at steps 0 and 2 (and its data)."""
    from conftest import write_synthetic_dataset

    from zigzag.cli import main
    from zigzag.device import load_data

    root = tmp_path_factory.mktemp("trained")
    data = write_synthetic_dataset(root / "tiny.h5")
    threads = torch.get_num_threads()
    try:
        assert main([str(a) for a in ("train", "--dataset", data, "--model", "cnn", "--width", "0.25", "--lr", "0.1",
                                      "--steps", 4, "--lags", 3, "--micro-batch", 96, "--sharpness", "every:2",
                                      "--seed", 3, "--device", "cpu", "--threads", 1, "--quiet",
                                      "--out", root / "train.h5")]) == 0
    finally:
        torch.set_num_threads(threads)
    return store.read_trajectory(root / "train.h5"), load_data(str(data), torch.device("cpu"))


def tiny_cnn(traj, data, seed):
    torch.manual_seed(seed)
    return build_model("cnn", width=0.25, in_channels=1, image_size=16, num_classes=data.num_classes,
                       batch_norm=traj.config["batch_norm"])


def test_a_gd_loop_records_what_zigzag_train_records_with_its_sharpness(trained, tmp_path, capsys):
    """The same model, data and seed in a plain full-batch GD loop: lag statistics within 1e-6 of the trainer's,
    and the closure's sharpness at the same steps equal to the trainer's; the file is analysed and its sharpness
    figure drawn."""
    from zigzag import Recorder

    traj, data = trained
    model = tiny_cnn(traj, data, seed=3).to(memory_format=torch.channels_last)  # as the trainer on a CPU
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.train_x.contiguous(memory_format=torch.channels_last), data.train_y

    def loss():  # the trainer's sum over its one micro-batch, over n
        return F.cross_entropy(model(x), y, reduction="sum") / len(x)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trainer's --threads 1
    try:
        with Recorder(tmp_path / "loop.h5", model, lags=3, settings={"seed": 3}, closure=loss,
                      sharpness={"every": "every:2"}) as recorder:
            for _ in range(4):
                optimizer.zero_grad()
                value = loss()
                value.backward()
                recorder.record(loss=value.item(), lr=0.1)
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    mine = store.read_trajectory(tmp_path / "loop.h5")
    np.testing.assert_allclose(mine.steps["loss"], traj.steps["loss"], rtol=1e-6)
    for name in ("grad_norm", *store.LAG_SERIES):
        np.testing.assert_allclose(mine.steps[name], traj.steps[name], rtol=1e-6, atol=1e-9, err_msg=name)
    solved = np.isfinite(traj.steps["sharpness"])
    assert solved.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(np.isfinite(mine.steps["sharpness"]), solved)
    np.testing.assert_allclose(mine.steps["sharpness"][solved], traj.steps["sharpness"][solved], rtol=1e-4)
    assert json.loads(mine.attrs["config"])["sharpness"] == {"every": "every:2"}
    zigzag_main(capsys, "analyze", tmp_path / "loop.h5", "--out", tmp_path / "an.h5", "--h", 3, "--windows", "none")
    zigzag_main(capsys, "figure", "sharpness", "--trajectory", tmp_path / "loop.h5", "--analysis", tmp_path / "an.h5",
                "--title", "mine", "--png", tmp_path / "s.png", "--pdf", tmp_path / "s.pdf")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_under_adam_the_analysis_gives_eq3_of_the_raw_gradients(trained, tmp_path, capsys):
    """Adam with a schedule, gradients set to None: ``zigzag analyze`` on the file gives the mean correlation of
    eq. 3 computed from the raw gradients by brute force."""
    from zigzag import Recorder

    _, data = trained
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    steps, h = 5, 3
    with Recorder(tmp_path / "adam.h5", model, lags=2, raw_steps=1, raw_dtype="float64") as recorder:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(data.train_x), data.train_y)
            loss.backward()
            recorder.record(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
    zigzag_main(capsys, "analyze", tmp_path / "adam.h5", "--out", tmp_path / "an.h5", "--h", h, "--windows", "none")
    with store.open_file(tmp_path / "adam.h5", store.TRAJECTORY) as f:
        g = f["raw/gradients"][()]
        assert f["steps/lr"][()].tolist() == [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3]
    mu = [g[k] @ g[k + 1] / np.linalg.norm(g[k]) / np.linalg.norm(g[k + 1]) for k in range(steps - 1)]
    expected = [np.mean(mu[k: k + h - 1]) for k in range(steps - h + 1)]
    found = store.read_analysis(tmp_path / "an.h5").mean_mu
    np.testing.assert_allclose(found[: steps - h + 1], expected, rtol=1e-6)
    assert np.isnan(found[steps - h + 1:]).all()


def test_a_params_subset_records_only_those_gradients(tmp_path):
    from zigzag import Recorder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    chosen = list(model[1].parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gradients = []
    with Recorder(tmp_path / "run.h5", model, lags=1, params=chosen, per_layer=True) as recorder:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(5, 4)).square().sum().backward()
            gradients.append(torch.cat([p.grad.reshape(-1) for p in chosen]).double().numpy())
            recorder.record(loss=0.0, lr=0.1)
            optimizer.step()
    traj = store.read_trajectory(tmp_path / "run.h5")
    assert traj.attrs["n_params"] == 3 * 2 + 2 and list(traj.attrs["layer_names"]) == ["1.weight", "1.bias"]
    g = np.array(gradients)
    np.testing.assert_allclose(traj.steps["grad_norm"], np.linalg.norm(g, axis=1), rtol=1e-6)
    np.testing.assert_allclose(traj.steps["dot"][1:, 1], np.sum(g[1:] * g[:-1], axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="require grad"):
        Recorder(tmp_path / "bad.h5", model, params=[torch.zeros(2)])


def test_resume_after_a_kill_continues_as_an_uninterrupted_loop(tmp_path):
    """``resume=True`` on a loop closed without finishing (what it checkpointed at step 3, a step recorded
    after that lost): the file continues from step 3 and equals an uninterrupted loop's, sharpness included."""
    from zigzag import Recorder
    from zigzag.recorder import ring_file

    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def run(path, start, stop, state=None, kill_after=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        recorder = Recorder(path, model, lags=2, closure=lambda: F.cross_entropy(model(x), y),
                            sharpness={"every": "every:2"}, resume=True)
        assert recorder.step == start
        for k in range(start, stop):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            recorder.record(loss=loss.item(), lr=0.3)
            optimizer.step()
            if k + 1 == kill_after:
                recorder.checkpoint()
                state = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}
        if kill_after is None:
            recorder.finish()
        else:
            recorder.writer.close()  # killed: neither finished nor checkpointed again
        return state

    run(tmp_path / "whole.h5", 0, 7)
    state = run(tmp_path / "run.h5", 0, 4, kill_after=3)
    assert store.read_trajectory(tmp_path / "run.h5").attrs["status"] == "running"
    run(tmp_path / "run.h5", 3, 7, state=state)
    whole, resumed = store.read_trajectory(tmp_path / "whole.h5"), store.read_trajectory(tmp_path / "run.h5")
    assert resumed.attrs["status"] == "completed" and not ring_file(tmp_path / "run.h5").exists()
    assert resumed.attrs["trajectory_id"] != whole.attrs["trajectory_id"]
    for name in ("loss", "grad_norm", "sharpness", *store.LAG_SERIES):
        np.testing.assert_allclose(resumed.steps[name], whole.steps[name], rtol=1e-6, err_msg=name)
    with pytest.raises(store.ZigzagError, match="nothing to resume"):
        Recorder(tmp_path / "run.h5", torch.nn.Linear(6, 3), lags=2, resume=True)
