"""A run and its perturbed twin: the perturbation's stated rule, the distances the divergence figure reads and
the growth rate it fits."""

import numpy as np
import pytest
import torch
from conftest import zigzag_main

from zigzag import analysis, store
from zigzag.curves import GROWTH_UNTIL, growth_rate, read_divergence
from zigzag.device import PERTURBATION_STREAM, perturb
from zigzag.models import build_model


def test_the_twins_initial_weights_follow_the_stated_rule(tiny_dataset, tmp_path, capsys):
    """Trained with raw parameters from step 0: the twin's theta_0 is p + eps |p| z with z from the stated
    generator, and init_perturbation 0 (the default) leaves the run's theta_0 bit for bit as without it."""
    common = ("train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.05", "--steps", "2",
              "--micro-batch", "48", "--device", "cpu", "--quiet", "--raw-parameters", "0,1", "--seed", "3")
    zigzag_main(capsys, *common, "--out", tmp_path / "run.h5")
    zigzag_main(capsys, *common, "--init-perturbation", "1e-3", "--out", tmp_path / "twin.h5")
    model = torch.nn.Sequential(torch.nn.Linear(1, 1))  # the stated rule, replayed on the run's own theta_0
    with store.open_file(tmp_path / "run.h5") as f, store.open_file(tmp_path / "twin.h5") as g:
        theta, twin = f["raw/parameters"][0], g["raw/parameters"][0]
        assert list(f["raw/parameter_steps"][()]) == [0, 1]
        assert (store.file_config(f)["init_perturbation"], store.file_config(g)["init_perturbation"]) == (0.0, 1e-3)
    torch.manual_seed(3)
    built = build_model("cnn", width=0.5, in_channels=1, image_size=16, num_classes=10, batch_norm=True)
    np.testing.assert_array_equal(theta, torch.cat([p.detach().reshape(-1) for p in built.parameters()]).numpy())
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, PERTURBATION_STREAM])))
    expected = theta + np.float32(1e-3) * np.abs(theta) * rng.standard_normal(theta.shape, dtype=np.float32)
    # one flat tensor draws what the model's tensors draw one after the other (the same stream, in order)
    with torch.no_grad():
        model[0].weight.data = torch.from_numpy(theta.copy()).reshape(1, -1)
        model[0].bias.data = torch.zeros(0)
    perturb(model, 1e-3, 3)
    np.testing.assert_array_equal(model[0].weight.detach().numpy().ravel(), expected)
    np.testing.assert_array_equal(twin, expected)
    assert (twin != theta).mean() > 0.9


def write_pair(folder, growth: float, d0: float = 1e-6, steps: int = 40, cap: float = 1.0):
    """Two trajectories of 4 parameters whose distance is d0 e^(growth k) until it reaches ``cap``, and their
    analyses; the loss distance is the parameter distance squared."""
    folder.mkdir()
    base = np.arange(1.0, 5.0, dtype=np.float32)
    distance = np.minimum(d0 * np.exp(growth * np.arange(steps)), cap)
    paths = []
    for name, offset in (("run", 0.0), ("twin", 1.0)):
        path, apath = folder / f"{name}.h5", folder / f"{name}.analysis.h5"
        writer = store.TrajectoryWriter.create(path, {"optimizer": "gd"}, n_params=4, n_train=10, lags=1,
                                               raw_parameters=True, attrs={"batches_per_epoch": 1,
                                                                           "total_steps": steps})
        for k in range(steps):
            writer.append({"loss": 1.0 + offset * distance[k] ** 2, "lr": 0.1, "epoch": k,
                           "dot": np.array([1.0, 1.0 if k else np.nan]), "opposite": np.array([0.0, np.nan])})
            writer.append_parameters(k, base + np.float32(offset * distance[k] / 2) * np.ones(4, np.float32))
        writer.finish("completed")
        traj = store.read_trajectory(path)
        store.write_analysis(apath, analysis.analyze(traj.steps, 2, [], 0.5, -0.5, 0.1), {}, traj.attrs)
        paths.append((str(path), str(apath)))
    return paths, distance


def test_the_distances_are_read_exactly_and_the_growth_rate_is_the_fitted_slope(tmp_path, capsys):
    (run, twin), distance = write_pair(tmp_path / "pair", growth=0.5)
    d = read_divergence(run[0], twin[0], "twin", store.read_analysis(twin[1]))
    # theta' - theta = distance / 2 on 4 entries: |.| = distance, up to float32 rounding of the parameters
    np.testing.assert_allclose(d.parameters, distance, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d.loss, (1.0 + distance ** 2) - 1.0)  # the losses as written, subtracted
    rate, first, last = growth_rate(np.arange(40, dtype=float), distance)
    assert rate == pytest.approx(0.5) and first == 0
    assert distance[last] >= GROWTH_UNTIL > distance[last - 1]  # the fit stops where it reaches 10% of the cap
    dip = np.concatenate([[1e-3, 1e-4], 1e-5 * np.exp(0.2 * np.arange(30))])
    assert growth_rate(np.arange(32.0), dip)[:2] == (pytest.approx(0.2), 2)  # from the smallest value on
    assert growth_rate(np.arange(3.0), np.zeros(3)) is None
    zigzag_main(capsys, "figure", "divergence", "--panel", *run, "run", "auto", "--panel", *twin, "twin", "auto",
                "--title", "pair", "--png", tmp_path / "d.png", "--pdf", tmp_path / "d.pdf")
    assert (tmp_path / "d.png").stat().st_size > 0


def test_a_pair_without_raw_parameters_is_one_line(tmp_path):
    (run, twin), _ = write_pair(tmp_path / "pair", growth=0.5)
    writer = store.TrajectoryWriter.create(tmp_path / "bare.h5", {}, n_params=4, n_train=1, lags=1)
    writer.finish("completed")
    with pytest.raises(store.ZigzagError, match="no /raw/parameters; train the run and its twin with raw_parameters"):
        read_divergence(run[0], str(tmp_path / "bare.h5"), "bare", store.read_analysis(twin[1]))
