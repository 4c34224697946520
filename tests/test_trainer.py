"""The trainer: exact full-batch gradients, the trajectory file, resume after SIGKILL, divergence."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_synthetic_dataset, zigzag_cli, zigzag_main

from zigzag import store
from zigzag.models import build_model
from zigzag.runconfig import RunConfig
from zigzag.step import accumulate_gradient
from zigzag.trainer import Trainer


@pytest.mark.parametrize("micro_batch", [3, 7, 32, 50])
def test_micro_batch_gradient_equals_one_giant_batch(micro_batch):
    torch.manual_seed(0)
    model = build_model("cnn", width=0.5, in_channels=1, image_size=16, batch_norm=False)
    x, y = torch.randn(100, 1, 16, 16), torch.randint(0, 10, (100,))
    F.cross_entropy(model(x), y).backward()
    reference = torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()])
    model.zero_grad()
    loss_sum, correct = accumulate_gradient(model, x, y, micro_batch)
    chunked = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    rel = ((chunked - reference).abs().max() / reference.abs().max()).item()
    assert rel <= 1e-5
    assert loss_sum.item() / 100 == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)
    assert correct.item() == (model(x).argmax(1) == y).sum().item()


def train(tiny_dataset, out, **overrides):
    settings = dict(dataset=tiny_dataset, model="cnn", width=0.5, lr=0.05, steps=12, lags=4, micro_batch=40,
                    batch_norm=False, eval_every=5, checkpoint_every=4, device="cpu")
    settings.update(overrides)
    return Trainer(RunConfig.from_dict(settings), out, progress=False).run()


def test_trajectory_schema_and_statistics_match_raw_gradients(tiny_dataset, tmp_path):
    out = tmp_path / "run" / "trajectory.h5"
    assert train(tiny_dataset, out, raw_gradients="every:1") == "completed"
    assert not (tmp_path / "run" / "trajectory.h5.resume").exists()
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "zigzag-trajectory" and f.attrs["status"] == "completed"
        assert f.attrs["lags"] == 4 and f.attrs["n_train"] == 96
        for name in ("loss", "accuracy", "lr", "epoch", "grad_norm", "time", "test_loss", "test_accuracy"):
            assert f["steps"][name].shape == (12,) and f["steps"][name].attrs["description"]
        dot, opp = f["steps/dot"][()], f["steps/opposite"][()]
        raw = f["raw/gradients"][()].astype(np.float64)
        assert raw.shape == (12, f.attrs["n_params"]) and f["raw/steps"][()].tolist() == list(range(12))
        test_loss = f["steps/test_loss"][()]
        assert np.isfinite(test_loss[[0, 5, 10, 11]]).all() and np.isnan(test_loss[[1, 2, 3, 4, 6]]).all()
        np.testing.assert_allclose(f["steps/grad_norm"][()], np.linalg.norm(raw, axis=1), rtol=1e-5)
        assert f["steps/epoch"][()].tolist() == list(range(12))
        assert np.allclose(f["steps/lr"][()], 0.05)
    for k in range(12):
        for lag in range(5):
            if k - lag < 0:
                assert np.isnan(dot[k, lag]) and np.isnan(opp[k, lag])
                continue
            assert dot[k, lag] == pytest.approx(raw[k] @ raw[k - lag], rel=1e-4, abs=1e-9)
            assert opp[k, lag] == pytest.approx(np.mean(raw[k] * raw[k - lag] < 0), abs=1e-12)


def test_gd_update_follows_the_recorded_gradient(tiny_dataset, tmp_path):
    """theta_1 = theta_0 - lr g_0, so the loss at step 1 is the loss of a model moved by the raw g_0."""
    out = tmp_path / "t.h5"
    train(tiny_dataset, out, steps=2, raw_gradients="0")
    traj = store.read_trajectory(out)
    with h5py.File(out, "r") as f:
        g0 = torch.from_numpy(f["raw/gradients"][0])
    torch.manual_seed(0)
    model = build_model("cnn", width=0.5, in_channels=1, image_size=16, batch_norm=False)
    data = store.read_dataset(tiny_dataset)
    x = (torch.from_numpy(data.train_images).float() / 255 - torch.tensor(data.mean).float().view(1, -1, 1, 1)) \
        / torch.tensor(data.std).float().view(1, -1, 1, 1)
    y = torch.from_numpy(data.train_labels)
    assert F.cross_entropy(model(x), y).item() == pytest.approx(traj.steps["loss"][0], rel=1e-5)
    torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(model.parameters()) - 0.05 * g0,
                                        model.parameters())
    assert F.cross_entropy(model(x), y).item() == pytest.approx(traj.steps["loss"][1], rel=1e-5)


def test_same_seed_is_deterministic(tiny_dataset, tmp_path):
    train(tiny_dataset, tmp_path / "a.h5", batch_norm=True)
    train(tiny_dataset, tmp_path / "b.h5", batch_norm=True)
    a, b = store.read_trajectory(tmp_path / "a.h5"), store.read_trajectory(tmp_path / "b.h5")
    for name in ("loss", "dot", "opposite", "test_accuracy"):
        np.testing.assert_array_equal(a.steps[name], b.steps[name])


def test_sigkill_then_rerun_resumes_and_equals_uninterrupted_run(tiny_dataset, tmp_path, capsys):
    args = ["train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "1", "--lr", "0.05",
            "--steps", "60", "--lags", "3", "--micro-batch", "32", "--checkpoint-every", "5",
            "--raw-gradients", "every:7", "--device", "cpu", "--threads", "1"]
    killed = tmp_path / "killed" / "trajectory.h5"
    partial = killed.parent / "trajectory.h5.resume" / "trajectory.h5"
    proc = subprocess.Popen([sys.executable, "-m", "zigzag", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (killed.parent / "trajectory.h5.resume" / "checkpoint.pt").exists():
            try:
                with h5py.File(partial, "r", locking=False) as f:
                    if f["steps/loss"].shape[0] >= 13:
                        break
            except (OSError, KeyError):
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed.exists(), "the declared output must not exist before the run finishes"
    result = zigzag_main(capsys, *args, "--out", killed)  # the rerun and the straight run in-process
    assert "resuming at step" in result.stderr
    zigzag_main(capsys, *args, "--out", tmp_path / "straight.h5")
    with h5py.File(killed, "r") as a, h5py.File(tmp_path / "straight.h5", "r") as b:
        assert a.attrs["status"] == b.attrs["status"] == "completed"
        for name in ("steps/loss", "steps/accuracy", "steps/lr", "steps/grad_norm", "steps/dot",
                     "steps/opposite", "steps/test_loss", "steps/test_accuracy", "raw/gradients", "raw/steps"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert a["steps/time"].shape == b["steps/time"].shape == (60,)


KILL_AT_STEP = """
import json, os, signal, sys
import torch
from zigzag import store
from zigzag.runconfig import RunConfig
from zigzag.trainer import Trainer
torch.set_num_threads(1)
store.FLUSH_SECONDS = 1e9  # rows reach the file only at checkpoints (and at the end)
settings, out, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
step = Trainer.step
def step_or_die(self, k):
    if k == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, k)
Trainer.step = step_or_die
Trainer(RunConfig.from_dict(settings), out, progress=False).run()
"""


def test_sigkill_with_buffered_rows_and_queued_raw_dumps_resumes_bit_identical(tiny_dataset, tmp_path):
    """Killed at step 10, two steps after the checkpoint at 8: steps 8 and 9 were only in the row buffer
    and the raw-dump queue, so the file holds exactly what the checkpoint claims and the rerun redoes them."""
    settings = json.dumps(dict(dataset=tiny_dataset, model="cnn", width=0.5, lr=0.05, steps=14, lags=3,
                               micro_batch=40, eval_every=3, checkpoint_every=4, raw_gradients="every:1",
                               raw_parameters="every:1", device="cpu"))
    killed, straight = tmp_path / "killed" / "trajectory.h5", tmp_path / "straight.h5"

    def run(out, kill_at):
        return subprocess.run([sys.executable, "-c", KILL_AT_STEP, settings, str(out), str(kill_at)],
                              capture_output=True, text=True)

    assert run(killed, 10).returncode == -signal.SIGKILL
    with h5py.File(killed.parent / "trajectory.h5.resume" / "trajectory.h5", "r") as f:
        assert f["steps/loss"].shape[0] == 8 and f["raw/steps"][:8].tolist() == list(range(8))
    resumed = run(killed, -1)
    assert resumed.returncode == 0 and "resuming at step 8" in resumed.stderr
    assert run(straight, -1).returncode == 0
    with h5py.File(killed, "r") as a, h5py.File(straight, "r") as b:
        assert a.attrs["status"] == b.attrs["status"] == "completed"
        for name in ("steps/loss", "steps/accuracy", "steps/lr", "steps/grad_norm", "steps/dot",
                     "steps/opposite", "steps/test_loss", "steps/test_accuracy", "raw/gradients", "raw/steps",
                     "raw/parameters", "raw/parameter_steps"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert a["raw/steps"][()].tolist() == a["raw/parameter_steps"][()].tolist() == list(range(14))


def test_divergence_is_recorded_and_exits_zero(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "div.h5"
    result = zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5",
                         "--lr", "1e12", "--steps", "50", "--no-batch-norm", "--micro-batch", "96", "--device", "cpu",
                         "--out", out)
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if "diverged" in line]
    assert len(warnings) == 1
    traj = store.read_trajectory(out)
    assert traj.status == "diverged"
    k = traj.attrs["diverged_at"]
    assert len(traj) == k + 1 and k < 49
    assert not np.isfinite([traj.steps["loss"][k], traj.steps["grad_norm"][k]]).all()


def test_wrong_input_format_and_unwritable_folder(tiny_dataset, tmp_path, capsys):
    traj = tmp_path / "t.h5"
    train(tiny_dataset, traj, steps=1)
    result = zigzag_main(capsys, "train", "--dataset", traj, "--model", "cnn", "--lr", "0.1", "--steps", "1",
                         "--out", tmp_path / "y.h5", check=False)
    assert result.returncode == 2 and "expected a zigzag-dataset" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--lr", "0.1", "--steps", "1",
                         "--out", blocker / "out.h5", check=False)
    assert result.returncode == 2 and "output folder" in result.stderr and result.stderr.count("\n") == 1


def test_inspect_summarises_and_rejects_foreign_or_truncated_files(tiny_dataset, tmp_path):
    out = tmp_path / "t.h5"
    train(tiny_dataset, out, steps=3)
    result = zigzag_cli("inspect", out)
    assert "zigzag-trajectory" in result.stdout and "/steps/dot (3, 5)" in result.stdout
    assert "status: completed" in result.stdout and "/steps/loss: first [" in result.stdout
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2]
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(out.read_bytes()[:2000])
    for path, message in ((foreign, "not a zigzag file"), (truncated, "truncated"), (tmp_path / "none.h5", "no such")):
        result = zigzag_cli("inspect", path, check=False)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_sharpness_is_recorded_at_selected_steps_and_matches_a_direct_solve(tiny_dataset, tmp_path):
    from zigzag.sharpness import top_eigenpair

    out = tmp_path / "sharp.h5"
    train(tiny_dataset, out, steps=4, sharpness={"every": "0,2", "subset": 48, "tol": 1e-5, "ncv": 12})
    traj = store.read_trajectory(out)
    sharp, cosine = traj.steps["sharpness"], traj.steps["grad_eigvec_cosine"]
    assert np.isfinite(sharp[[0, 2]]).all() and np.isnan(sharp[[1, 3]]).all()
    assert np.all((cosine[[0, 2]] >= 0) & (cosine[[0, 2]] <= 1))
    assert traj.steps["sharpness_hvps"][0] >= 1
    converged = traj.steps["sharpness_converged"]
    assert (converged[[0, 2]] == 1).all() and np.isnan(converged[[1, 3]]).all()
    # Step 0: theta_0 is the seeded initialisation; the subset is the seeded sorted sample of 48.
    torch.manual_seed(0)
    model = build_model("cnn", width=0.5, in_channels=1, image_size=16, batch_norm=False)
    data = store.read_dataset(tiny_dataset)
    x = (torch.from_numpy(data.train_images).float() / 255 - torch.tensor(data.mean).float().view(1, -1, 1, 1)) \
        / torch.tensor(data.std).float().view(1, -1, 1, 1)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))[:48].sort().values
    direct = top_eigenpair(model, x[order], torch.from_numpy(data.train_labels)[order], 40, tol=1e-5, ncv=12)
    assert sharp[0] == pytest.approx(direct.eigenvalue, rel=1e-4)


def check_every_solve_densely(trainer: Trainer) -> list:
    """Make every sharpness solve of ``trainer`` also form the whole Hessian (torch.func.hessian of the mean
    loss); returns the list of (step, row, dense lambda_max, dense residual of the solve's pair) it fills."""
    checks, tracker = [], trainer.sharpness
    measure = tracker.measure

    def checked(model, k, lr, grad):
        row = measure(model, k, lr, grad)
        model = copy.deepcopy(model).double()  # the trainer's own model is left alone
        names = [name for name, _ in model.named_parameters()]
        shapes = [p.shape for p in model.parameters()]
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

        def loss(flat):
            params = {n: t.view(s) for n, t, s in zip(names, flat.split([s.numel() for s in shapes]), shapes)}
            return torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, (tracker.x.double(),)),
                                                     tracker.y)

        hessian = torch.func.hessian(loss)(theta)
        v = tracker.eigenvector.double()
        checks.append((k, row, float(torch.linalg.eigvalsh(hessian)[-1]),
                       float((hessian @ v - row["sharpness"] * v).norm()) / row["sharpness"]))
        return row

    tracker.measure = checked
    return checks


def test_every_solve_of_a_short_run_is_within_one_percent_of_a_dense_eigendecomposition(tmp_path):
    """A CNN of 156 parameters on 8 x 8 images, sharpness at every step with the default tolerance (1e-3),
    cold then warm: each recorded lambda_max within 1 % of the top eigenvalue of the dense Hessian, and
    each recorded residual the one the dense Hessian gives."""
    dataset = write_synthetic_dataset(tmp_path / "small.h5", n_train=48, n_test=16, size=8)
    settings = dict(dataset=str(dataset), model="cnn", width=0.03125, lr=0.5, steps=6, lags=2, micro_batch=48,
                    batch_norm=False, eval_every=5, checkpoint_every=100, device="cpu", sharpness={"every": "every:1"})
    trainer = Trainer(RunConfig.from_dict(settings), tmp_path / "dense.h5", progress=False)
    assert trainer.n_params <= 2000
    checks = check_every_solve_densely(trainer)
    assert trainer.run() == "completed"
    assert [k for k, *_ in checks] == list(range(6))
    for k, row, dense, residual in checks:
        assert row["sharpness_converged"] == 1
        assert row["sharpness"] == pytest.approx(dense, rel=1e-2), k
        assert row["sharpness_residual"] <= 1e-3
        assert row["sharpness_residual"] == pytest.approx(residual, rel=1e-2, abs=1e-4), k
    traj = store.read_trajectory(tmp_path / "dense.h5")
    assert np.array_equal(traj.steps["sharpness"], [row["sharpness"] for _, row, *_ in checks])


def test_a_lanczos_solve_short_of_tol_is_recorded_and_warned(tiny_dataset, tmp_path):
    """One restart cannot reach tol 1e-10: the step records sharpness_converged 0 (its sharpness, the best
    Rayleigh quotient, a lower bound) and the log says so; the trajectory is kept."""
    (tmp_path / "run.yaml").write_text("sharpness: {max_iter: 1, tol: 1.0e-10, ncv: 3}\n")
    out = tmp_path / "t.h5"
    result = zigzag_cli("train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.25", "--no-batch-norm",
                        "--lr", "0.05", "--steps", "2", "--micro-batch", "96", "--device", "cpu", "--sharpness", "0",
                        "--config", tmp_path / "run.yaml", "--quiet", "--out", out)
    warnings = [line for line in result.stderr.splitlines() if "Lanczos" in line]
    assert len(warnings) == 1 and "step 0" in warnings[0] and "max_iter=1" in warnings[0], result.stderr
    traj = store.read_trajectory(out)
    assert traj.steps["sharpness_converged"][0] == 0 and np.isnan(traj.steps["sharpness_converged"][1])
    assert np.isfinite(traj.steps["sharpness"][0])
    assert "sharpness_converged" in zigzag_cli("inspect", out).stdout


def test_nesterov_momentum_takes_the_look_ahead_step(tiny_dataset, tmp_path, capsys):
    """torch's Nesterov SGD: buffer b_k = m b_(k-1) + g_k (b_0 = g_0), step lr (g_k + m b_k); so the first
    update is -lr (1 + m) g_0. The setting is a flag, checked (it needs momentum) and recorded."""
    config = RunConfig.from_dict(dict(dataset=tiny_dataset, model="cnn", width=0.25, lr=0.05, steps=2,
                                      momentum=0.9, nesterov=True, batch_norm=False, micro_batch=96, device="cpu"))
    trainer = Trainer(config, tmp_path / "t.h5", progress=False)
    trainer.open_trajectory()
    theta0 = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])  # a copy
    trainer.step(0)
    theta1 = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    trainer.recorder.close()
    # float32 parameters: the difference theta1 - theta0 keeps about 1e-7 of theta's size
    torch.testing.assert_close(theta1 - theta0, -0.05 * 1.9 * trainer.recorder.gradients.flat, rtol=1e-4, atol=1e-7)
    flags = ["--dataset", tiny_dataset, "--model", "cnn", "--width", "0.25", "--lr", "0.05", "--steps", "1",
             "--device", "cpu", "--nesterov", "--quiet"]
    result = zigzag_main(capsys, "train", *flags, "--out", tmp_path / "bad.h5", check=False)
    assert result.returncode == 2 and result.stderr == ("zigzag: error: invalid nesterov=True: must be false "
                                                        "without momentum (set momentum > 0)\n")
    zigzag_main(capsys, "train", *flags, "--momentum", "0.5", "--out", tmp_path / "ok.h5")
    assert store.read_trajectory(tmp_path / "ok.h5").config["nesterov"] is True


def test_config_file_is_equivalent_to_flags(tiny_dataset, tmp_path, capsys):
    flags = ["--dataset", tiny_dataset, "--model", "cnn", "--width", "0.25", "--lr", "0.05", "--steps", "3",
             "--lags", "2", "--micro-batch", "50", "--device", "cpu"]
    zigzag_main(capsys, "train", *flags, "--out", tmp_path / "flags.h5")
    (tmp_path / "run.yaml").write_text(f"dataset: {tiny_dataset}\nmodel: cnn\nwidth: 0.25\nlr: 0.05\nsteps: 3\n"
                                       "lags: 2\nmicro_batch: 50\ndevice: cpu\n")
    zigzag_main(capsys, "train", "--config", tmp_path / "run.yaml", "--out", tmp_path / "file.h5")
    a, b = store.read_trajectory(tmp_path / "flags.h5"), store.read_trajectory(tmp_path / "file.h5")
    assert a.config == b.config
    np.testing.assert_array_equal(a.steps["dot"], b.steps["dot"])
    (tmp_path / "bad.yaml").write_text("dataset: x\nmodel: cnn\nlr: 0.1\nstep: 3\n")
    result = zigzag_main(capsys, "train", "--config", tmp_path / "bad.yaml", "--out", tmp_path / "bad.h5", check=False)
    assert result.returncode == 2 and "unknown run setting(s) step" in result.stderr


def test_sharpness_of_a_batchnorm_model_uses_the_training_ghost_batches(tiny_dataset, tmp_path):
    """With BatchNorm the subset is split into ghost batches of micro_batch, as in training: lambda_max equals
    a solve on those ghost batches built one by one; a subset that cannot be split so stops with one line."""
    from zigzag.sharpness import top_eigenpair_of

    out = tmp_path / "bn.h5"
    train(tiny_dataset, out, steps=1, batch_norm=True, micro_batch=24,
          sharpness={"every": "0", "subset": 48, "tol": 1e-6, "ncv": 12})
    traj = store.read_trajectory(out)
    assert traj.attrs["sharpness_subset"] == 48 and traj.attrs["sharpness_batch"] == 24
    torch.manual_seed(0)
    model = build_model("cnn", width=0.5, in_channels=1, image_size=16, batch_norm=True)
    model.train()
    data = store.read_dataset(tiny_dataset)
    x = (torch.from_numpy(data.train_images).float() / 255 - torch.tensor(data.mean).float().view(1, -1, 1, 1)) \
        / torch.tensor(data.std).float().view(1, -1, 1, 1)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))[:48].sort().values
    x, y = x[order], torch.from_numpy(data.train_labels)[order]
    params = list(model.parameters())

    def hvp(v):  # (1/48) sum over the two ghost batches of 24 of d/dtheta <grad CE_j, v>
        pieces = [p.view_as(q) for p, q in zip(v.split([q.numel() for q in params]), params)]
        total = torch.zeros_like(v)
        for batch in (slice(0, 24), slice(24, 48)):
            grads = torch.autograd.grad(F.cross_entropy(model(x[batch]), y[batch], reduction="sum"), params,
                                        create_graph=True)
            hv = torch.autograd.grad(sum((g * p).sum() for g, p in zip(grads, pieces)), params)
            total += torch.cat([h.reshape(-1) for h in hv])
        return total / 48

    ghost = top_eigenpair_of(hvp, sum(p.numel() for p in params), dtype=torch.float32, tol=1e-6, ncv=12)
    assert traj.steps["sharpness"][0] == pytest.approx(ghost.eigenvalue, rel=1e-3)
    # 40 does not split into ghost batches of 24 (the old code took a last BatchNorm batch of 16).
    flags = ["--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.05", "--steps", "2",
             "--micro-batch", "24", "--device", "cpu", "--sharpness", "every:1"]
    (tmp_path / "run.yaml").write_text("sharpness: {subset: 40}\n")
    result = zigzag_cli("train", *flags, "--config", tmp_path / "run.yaml", "--out", tmp_path / "bad.h5", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("zigzag: error: invalid sharpness.subset=40: with BatchNorm it must be a "
                                    "multiple of micro_batch=24") and "24 or 48" in result.stderr
    assert not (tmp_path / "bad.h5").exists()


def test_compiled_step_gives_the_same_gradient(tiny_dataset, tmp_path):
    """compile: true runs the step's forward+backward through torch.compile (inductor). Same g_0 as the
    eager step to 1e-5 of its largest entry (the compiled kernels may reorder float32 sums); a tiny
    model, since compiling takes most of a minute on a CPU."""
    grads = {}
    for compile_ in (False, True):
        config = RunConfig.from_dict(dict(dataset=tiny_dataset, model="cnn", width=0.25, lr=0.05, steps=1, lags=1,
                                          micro_batch=48, device="cpu", compile=compile_))
        trainer = Trainer(config, tmp_path / f"{compile_}.h5", progress=False)
        assert (trainer.step_model is not trainer.model) == compile_
        with trainer.precision.applied():
            trainer.open_trajectory()
            row = trainer.step(0)
        trainer.recorder.close()
        grads[compile_] = (trainer.recorder.gradients.flat.clone(), row["loss"])
    (eager, loss), (compiled, compiled_loss) = grads[False], grads[True]
    assert (compiled - eager).abs().max().item() <= 1e-5 * eager.abs().max().item()
    assert compiled_loss == pytest.approx(loss, rel=1e-6)


def test_the_trainer_only_wires_its_parts():
    """``Trainer`` stays a class that wires the step, the recorder, the checkpoints and the schedule: at most
    150 lines, and it holds no gradient arithmetic of its own (that is zigzag/step.py's)."""
    import ast
    import inspect

    from zigzag import trainer

    tree = ast.parse(inspect.getsource(trainer))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Trainer"]
    assert cls.end_lineno - cls.lineno + 1 <= 150
    called = {node.func.attr for node in ast.walk(cls) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute)}
    assert not called & {"backward", "cross_entropy"}


def test_train_per_layer_writes_the_statistics_of_every_tensor_summing_to_the_whole_vector(tmp_path, tiny_dataset,
                                                                                           capsys):
    """``zigzag train --per-layer``: /steps/layer_dot and /steps/layer_opposite [K, T, L+1] with the tensors' names
    and sizes in model.parameters() order; summed over the tensors the dots give /steps/dot (1e-6 relative)."""
    out = tmp_path / "run.h5"
    zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.1",
                "--steps", "5", "--lags", "2", "--micro-batch", "48", "--device", "cpu", "--per-layer", "--quiet",
                "--out", out)
    traj = store.read_trajectory(out)
    model = build_model("cnn", width=0.5, in_channels=1, image_size=16, batch_norm=True)
    named = [(name, p.numel()) for name, p in model.named_parameters()]
    assert list(traj.attrs["layer_names"]) == [name for name, _ in named]
    assert traj.attrs["layer_sizes"].tolist() == [size for _, size in named] and sum(
        traj.attrs["layer_sizes"]) == traj.attrs["n_params"]
    layer_dot, dot = traj.steps["layer_dot"], traj.steps["dot"]
    assert layer_dot.shape == traj.steps["layer_opposite"].shape == (5, len(named), 3)
    np.testing.assert_array_equal(np.isnan(layer_dot), np.isnan(dot)[:, None, :].repeat(len(named), 1))
    norms = np.sqrt(dot[:, 0])
    scale = np.array([[norms[k] * norms[k - lag] for lag in range(3)] for k in range(2, 5)])  # |g_k| |g_k-l|
    np.testing.assert_array_less(np.abs(layer_dot.sum(1) - dot)[2:], 1e-6 * scale)
    shares = traj.steps["layer_opposite"][2:]
    assert ((shares >= 0) & (shares <= 1)).all() and (shares[:, :, 1] > 0).any()
    zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.1",
                "--steps", "5", "--lags", "2", "--micro-batch", "48", "--device", "cpu", "--quiet",
                "--out", tmp_path / "plain.h5")
    plain = store.read_trajectory(tmp_path / "plain.h5")
    assert "layer_dot" not in plain.steps and "layer_names" not in plain.attrs
    for name in store.LAG_SERIES:  # the whole-vector statistics do not change with per_layer
        np.testing.assert_array_equal(plain.steps[name], traj.steps[name])
