"""Mini-batch SGD and the WU / GAWU schedules inside the trainer."""

import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import zigzag_cli, zigzag_main

from zigzag import analysis, store
from zigzag.errors import Interrupted
from zigzag.models import build_model
from zigzag.runconfig import RunConfig
from zigzag.trainer import Trainer


def sgd_settings(tiny_dataset, **overrides):
    settings = dict(dataset=tiny_dataset, model="cnn", width=0.5, batch_norm=False, optimizer="sgd", lr=0.05,
                    epochs=3, batch_size=40, lags=3, micro_batch=16, eval_every=100, checkpoint_every=2,
                    device="cpu", seed=3)
    settings.update(overrides)
    return RunConfig.from_dict(settings)


def test_sgd_step_uses_the_seeded_batch_and_records_its_epoch(tiny_dataset, tmp_path):
    out = tmp_path / "sgd.h5"
    Trainer(sgd_settings(tiny_dataset, raw_gradients="0,2", base_batch=20), out, progress=False).run()
    traj = store.read_trajectory(out)
    # 96 samples, batch 40: two full batches per epoch (the last 16 are dropped).
    assert traj.steps["epoch"].tolist() == [0, 0, 1, 1, 2, 2]
    assert np.allclose(traj.steps["lr"], 0.05 * 40 / 20)  # linear scaling rule
    data = store.read_dataset(tiny_dataset)
    mean = torch.tensor(data.mean).float().view(1, -1, 1, 1)
    std = torch.tensor(data.std).float().view(1, -1, 1, 1)
    x = (torch.from_numpy(data.train_images).float() / 255 - mean) / std
    y = torch.from_numpy(data.train_labels)
    torch.manual_seed(3)
    model = build_model("cnn", width=0.5, in_channels=1, image_size=16, batch_norm=False)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(3 * 1_000_003 + 0))
    batch = order[:40]
    F.cross_entropy(model(x[batch]), y[batch]).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    with h5py.File(out, "r") as f:
        g0 = torch.from_numpy(f["raw/gradients"][0])
        g2 = torch.from_numpy(f["raw/gradients"][1])
    assert ((g0 - expected).abs().max() / expected.abs().max()).item() < 1e-5
    assert traj.steps["loss"][0] == pytest.approx(F.cross_entropy(model(x[batch]), y[batch]).item(), rel=1e-5)
    assert not torch.allclose(g0, g2)  # a new epoch, a new permutation, new parameters


def test_warmup_cosine_lrs_follow_the_closed_form_per_epoch(tiny_dataset, tmp_path):
    out = tmp_path / "wu.h5"
    schedule = {"kind": "warmup_cosine", "eta0": 0.01, "omega": 0.5, "change_point": 2, "unit": "epoch",
                "growth": "constant"}
    Trainer(sgd_settings(tiny_dataset, epochs=5, schedule=schedule), out, progress=False).run()
    traj = store.read_trajectory(out)
    epochs = traj.steps["epoch"].astype(int)
    peak = 0.01 * math.exp(0.5 * 2)
    expected = [0.01 * math.exp(0.5 * u) if u < 2 else peak * 0.5 * (1 + math.cos(math.pi * (u - 2) / 3))
                for u in epochs]
    np.testing.assert_allclose(traj.steps["lr"], expected, rtol=1e-12)
    assert traj.attrs["change_point_epoch"] == 2 and traj.attrs["change_point_step"] == 4  # 2 batches per epoch


def test_the_paper_warmup_is_the_default_and_recorded(tiny_dataset, tmp_path):
    """Section 5.2: eta_u = exp(omega u) eta_(u-1) per epoch; the trajectory's settings name the rule."""
    out = tmp_path / "wu.h5"
    schedule = {"kind": "warmup_cosine", "eta0": 0.001, "omega": 0.5, "change_point": 3}
    Trainer(sgd_settings(tiny_dataset, epochs=5, schedule=schedule), out, progress=False).run()
    traj = store.read_trajectory(out)
    assert traj.config["schedule"]["growth"] == "paper"
    epochs = traj.steps["epoch"].astype(int)
    warm = 0.001 * np.exp(0.5 * np.array([0.0, 1.0, 3.0, 6.0]))  # exponents u (u + 1) / 2
    expected = [warm[u] if u < 3 else warm[3] * 0.5 * (1 + math.cos(math.pi * (u - 3) / 2)) for u in epochs]
    np.testing.assert_allclose(traj.steps["lr"], expected, rtol=1e-12)


def test_gawu_switches_where_the_online_mean_correlation_turns_negative(tiny_dataset, tmp_path):
    out = tmp_path / "gawu.h5"
    schedule = {"kind": "gawu", "eta0": 0.05, "omega": 0.6, "unit": "iteration", "h": 3, "growth": "constant"}
    Trainer(sgd_settings(tiny_dataset, optimizer="gd", steps=30, lr=1.0, micro_batch=96, schedule=schedule),
            out, progress=False).run()
    traj = store.read_trajectory(out)
    dot = traj.steps["dot"]
    cosines = dot[1:, 1] / np.sqrt(dot[1:, 0] * dot[:-1, 0])  # mu(k-1, k) for k = 1..
    expected, seen_positive = None, False
    for k in range(2, 30):  # after step k the monitor holds mu(k-1, k) and mu(k-2, k-1)
        m = cosines[k - 2:k].mean()
        if m < 0 and seen_positive:
            expected = k
            break
        seen_positive |= m > 0
    assert expected is not None, "the constructed run should turn zigzag as its lr grows"
    assert traj.attrs["change_point_step"] == traj.attrs["change_point_epoch"] == expected  # GD: a step per epoch
    lr = traj.steps["lr"]
    np.testing.assert_allclose(lr[: expected + 1], 0.05 * np.exp(0.6 * np.arange(expected + 1)), rtol=1e-12)
    assert lr[expected + 1] < lr[expected]


def test_analysis_change_point_follows_the_trainers_gawu_rule(tiny_dataset, tmp_path):
    """GAWU per epoch (2 iterations, h = 3): the analysis finds the trainer's change point, stored and
    printed as a step and an epoch; a per-step reading of the same cosines would switch a step later."""
    out, an = tmp_path / "gawu.h5", tmp_path / "gawu.analysis.h5"
    schedule = {"kind": "gawu", "eta0": 0.02, "omega": 0.3, "h": 3}
    Trainer(sgd_settings(tiny_dataset, epochs=8, schedule=schedule), out, progress=False).run()
    traj = store.read_trajectory(out)
    assert (traj.attrs["change_point_step"], traj.attrs["change_point_epoch"]) == (8, 4)
    result = zigzag_cli("analyze", out, "--out", an, "--h", "4")
    assert "GAWU change point (h=3, per epoch): step 8 (epoch 4)" in result.stdout
    with h5py.File(an, "r") as f:
        assert (f.attrs["change_point_step"], f.attrs["change_point_epoch"]) == (8, 4)
        assert "change_point" not in f.attrs
    adjacent = store.read_analysis(an).adjacent_mu
    assert analysis.online_change_point(adjacent, 3, steps_per_unit=1) == 9
    shown = zigzag_cli("inspect", out).stdout
    assert "change_point_step: 8" in shown and "change_point_epoch: 4" in shown


def test_interrupted_gawu_sgd_run_resumes_to_the_same_file(tiny_dataset, tmp_path, monkeypatch):
    schedule = {"kind": "gawu", "eta0": 0.02, "omega": 0.4, "unit": "epoch", "h": 3}
    config = sgd_settings(tiny_dataset, epochs=6, momentum=0.9, schedule=schedule)
    Trainer(config, tmp_path / "straight.h5", progress=False).run()
    calls = {"n": 0}
    original = store.TrajectoryWriter.append

    def crash_at_step_7(self, row):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        original(self, row)

    monkeypatch.setattr(store.TrajectoryWriter, "append", crash_at_step_7)
    with pytest.raises(Interrupted, match="interrupted at step 7 of 12; rerun to resume from the checkpoint"):
        Trainer(config, tmp_path / "resumed.h5", progress=False).run()
    monkeypatch.setattr(store.TrajectoryWriter, "append", original)
    Trainer(config, tmp_path / "resumed.h5", progress=False).run()
    a, b = store.read_trajectory(tmp_path / "straight.h5"), store.read_trajectory(tmp_path / "resumed.h5")
    for name in ("loss", "lr", "dot", "opposite", "epoch"):
        np.testing.assert_array_equal(a.steps[name], b.steps[name], err_msg=name)
    assert a.attrs["change_point_step"] == b.attrs["change_point_step"]


@pytest.mark.parametrize("flags, expected", [
    (["--settings", '{"schedule": {"kind": "gawu", "eta0": 0.1, "omega": 0}}'], "schedule.omega"),
    (["--settings", '{"schedule": {"kind": "gawu", "eta0": -1, "omega": 0.1}}'], "schedule.eta0"),
    (["--settings", '{"schedule": {"kind": "gawu", "eta0": 0.1, "omega": 0.1, "growth": "linear"}}'],
     "schedule.growth='linear'"),
    (["--settings", '{"schedule": {"kind": "warmup_cosine", "eta0": 0.1, "omega": 0.1, "change_point": 3}}'],
     "beyond the budget of 3 epochs"),
    (["--settings", '{"batch_size": 500}'], "larger than the training set (96)"),
])
def test_bad_schedule_or_batch_is_one_line_before_training(tiny_dataset, tmp_path, capsys, flags, expected):
    import json

    settings = {"dataset": tiny_dataset, "model": "cnn", "lr": 0.1, "optimizer": "sgd", "epochs": 3,
                "batch_size": 32, **json.loads(flags[1])}
    result = zigzag_main(capsys, "train", "--settings", json.dumps(settings), "--out", tmp_path / "x.h5", check=False)
    assert result.returncode == 2 and expected in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.resume").exists()
