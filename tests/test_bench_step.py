"""benchmarks/bench_step.py's paper case: the preset estimate's arithmetic, and the case runs on a CPU."""

import math
import types

import pytest
import yaml
from conftest import benchmark_script


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("bench_step")


PRESET = {
    "datasets": {"c": {"source": "cifar10"}},
    "runs": {
        "gd": {"dataset": "c", "model": "cnn", "batch_norm": False, "steps": 10, "eval_every": 5, "micro_batch": 100},
        "sgd": {"dataset": "c", "model": "cnn", "batch_norm": False, "optimizer": "sgd", "batch_size": 20_000,
                "epochs": 2, "seeds": [0, 1], "eval_every": 1, "micro_batch": 100},
        "eos": {"dataset": "c", "model": "cnn", "batch_norm": False, "steps": 10, "micro_batch": 100,
                "sharpness": {"every": "every:4", "subset": 5000}},
    },
}


def test_preset_estimate_follows_the_preset(bench):
    timings = {("cnn", False, 100): {"epoch_s": 2.0, "forward_s": 1.0, "hvp_s": 3.0}}
    rows = {r["run"]: r for r in bench.preset_hours(PRESET, timings)}
    # GD: 10 epochs x 2 s + evaluations at steps 0, 5, 9 over 10,000 test images (1 s per 50,000)
    assert rows["gd"]["seconds"] == pytest.approx(10 * 2 + 3 * 0.2)
    # SGD: 2 batches of 20,000 per epoch, 4 steps over 80,000 images, 4 evaluations, 2 seeds
    assert rows["sgd"]["steps"] == 4 and rows["sgd"]["seconds"] == pytest.approx(2 * (80_000 / 50_000 * 2 + 4 * 0.2))
    # sharpness at steps 0, 4, 8: one cold solve (21 products) and two warm ones (9 each) on 5,000 images
    assert rows["eos"]["seconds"] == pytest.approx(10 * 2 + 2 * 0.2 + (21 + 2 * 9) * 0.1 * 3.0)


def test_paper_case_runs_on_a_cpu_with_few_images(bench, tmp_path, monkeypatch, capsys):
    preset = {"datasets": {"cifar10": {"source": "cifar10"}},
              "runs": {"cnn": {"dataset": "cifar10", "model": "cnn", "batch_norm": False, "steps": 3, "micro_batch": 4,
                               "sharpness": {"every": "every:2"}}}}
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    monkeypatch.setattr(bench, "PRESET", path)
    args = types.SimpleNamespace(device="cpu", precision="tf32", paper_images=6, repeats=1)
    hours = bench.run_paper(args, tmp_path)
    out = capsys.readouterr().out
    assert math.isfinite(hours) and hours > 0
    assert "cnn" in out and "s/epoch" in out and f"{hours:.2f} hours of this device" in out


def test_precisions_case_times_each_mode_and_compares_its_gradient(bench, tmp_path, capsys):
    args = types.SimpleNamespace(device="cpu", samples=8, repeats=1)
    rows = bench.run_precisions(args, tmp_path, model="cnn", width=0.25)
    assert [r["mode"] for r in rows] == ["fp32", "tf32", "bf16"]
    for r in rows:  # on a CPU every mode computes in float32: the same gradient, TF32 off
        assert r["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert r["step_s"] > 0 and r["flags"]["cudnn.allow_tf32"] is False and r["flags"]["autocast"] == "none"
    out = capsys.readouterr().out
    assert "| bf16 |" in out and "gradient cosine with fp32" in out
