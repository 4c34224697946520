"""benchmarks/bench_step.py's cases run on a CPU at tiny sizes: the step overhead (each part timed through its own
interface), the precisions and the paper estimate (whose arithmetic tests/test_estimate.py checks)."""

import ast
import math
import re
import types
from pathlib import Path

import pytest
import yaml
from conftest import benchmark_script


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("bench_step")


def test_paper_case_runs_on_a_cpu_with_few_images(bench, tmp_path, capsys):
    preset = {"datasets": {"cifar10": {"source": "cifar10"}},
              "runs": {"cnn": {"dataset": "cifar10", "model": "cnn", "batch_norm": False, "lr": 0.1, "steps": 3,
                               "micro_batch": 4, "sharpness": {"every": "every:2"}}},
              "sweeps": {"s": {"base": "cnn", "lr": [0.05, 0.2]}}}
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    args = types.SimpleNamespace(device="cpu", precision="tf32", paper_images=6, repeats=1)
    hours = bench.run_paper(args, tmp_path, path)
    out = capsys.readouterr().out
    assert math.isfinite(hours) and hours > 0
    assert "cnn" in out and "s/epoch" in out and f"{hours:.2f} hours of this device" in out
    assert re.search(r"sweep s \(all_sweeps\): [0-9.]+ hours", out)  # priced apart from the total


def test_precisions_case_times_each_mode_and_compares_its_gradient(bench, tmp_path, capsys):
    args = types.SimpleNamespace(device="cpu", samples=8, repeats=1, precision="tf32")
    rows = bench.run_precisions(args, tmp_path, model="cnn", width=0.25)
    assert [r["mode"] for r in rows] == ["fp32", "tf32", "bf16"]
    for r in rows:  # on a CPU every mode computes in float32: the same gradient, TF32 off
        assert r["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert r["step_s"] > 0 and r["flags"]["cudnn.allow_tf32"] is False and r["flags"]["autocast"] == "none"
    out = capsys.readouterr().out
    assert "| bf16 |" in out and "gradient cosine with fp32" in out


def test_step_overhead_times_every_variant_in_every_repeat(tmp_path, monkeypatch, capsys):
    """A step-overhead case (an SGD one, as resnet18-sgd) with a narrow cnn on 8 images and batches of 4."""
    overhead = benchmark_script("step_overhead")
    dataset = overhead.random_dataset(tmp_path, 8)
    settings = dict(dataset=str(dataset), model="cnn", width=0.25, micro_batch=4, optimizer="sgd", batch_size=4)
    monkeypatch.setattr(overhead, "case_settings", lambda name, args, tmp: (settings, 2, "tiny"))
    args = types.SimpleNamespace(device="cpu", precision="tf32", repeats=2, warmup_steps=3, samples=None)
    result = overhead.run_case("tiny", args, tmp_path)
    median, ratios = result["median"], result["ratios"]
    assert set(median) == {"bare", "step", "push", "raw", "dump", "nostats", "run"}
    assert all(median[key] > 0 for key in ("bare", "step", "push", "raw", "dump", "run"))
    assert result["samples"] == 4 and result["micro_batch"] == 4
    assert 0 < ratios["b"] < 1 and ratios["c_timer"] > 0 and ratios["a"] > 0
    assert math.isfinite(ratios["c"]) and math.isfinite(ratios["run_vs_step"])
    out = capsys.readouterr().out
    assert "repeat 2/2" in out and "(b) LagRing.push / GD step" in out
    assert not list(tmp_path.glob("tiny_*")), "the case removes its trajectory files"


STEP_BENCHMARK = ("bench_step", "step_overhead", "precisions", "paper_estimate", "setups", "timing")


@pytest.mark.parametrize("name", STEP_BENCHMARK)
def test_the_step_benchmark_replaces_no_attribute_of_what_it_times(name):
    """No assignment to an attribute (``tr.recorder.ring.push = ...``, ``module.function = ...``) anywhere in the
    step benchmark's modules: each part is timed through its own interface."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    tree = ast.parse(path.read_text())
    targets = [t for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    attributes = [ast.unparse(t) for target in targets for t in ast.walk(target) if isinstance(t, ast.Attribute)
                  and not ast.unparse(t).startswith("args.")]  # the parsed command line, which nothing times
    calls = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Call)
             and ast.unparse(node.func) in ("setattr", "monkeypatch.setattr")]
    assert attributes == [] and calls == []
