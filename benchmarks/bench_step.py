"""Per-step overhead of zigzag's GD step against the bare forward+backward pass
(docs/design.md, "Tests and measurements").

    python benchmarks/bench_step.py [--device cpu|cuda] [--repeats N] [--cases cnn,resnet18,resnet18-sgd] [--samples N]

One run prints, per case, ratios of times measured on the same machine in the same process:

(a) GD step / bare forward+backward over the same samples            target <= 1.05
(b) LagRing.push inside the GD step / GD step                         target <= 1 %
(c) (GD step + raw-gradient dump) / GD step - 1                        target <= 10 %

Times are medians over ``--repeats``; each ratio is the median over repeats of the ratio measured within
one repeat (paired), so load drift between repeats cancels. Variants timed in every repeat (their order
rotates from repeat to repeat, so drift within a repeat hits all alike):

- ``bare``: forward + backward only, over the same micro-batches, the minimum any full-batch GD needs:
  ``F.cross_entropy(model(xb), yb, reduction="sum").div(n).backward()`` per micro-batch, nothing else
  (no zeroing, no optimizer step, no loss bookkeeping).
- ``nostats``: ``step`` with ``LagRing.push`` replaced by constant statistics: what the step costs
  without the lag statistics.
- ``step``: one iteration of ``Trainer.run``'s loop for a step without test evaluation, sharpness,
  progress output or checkpoint: ``Trainer.step`` itself (the very method the loop calls) and
  ``TrajectoryWriter.append`` of its row, at a constant learning rate. ``LagRing.push`` is also timed
  on its own inside it (b), and so is ``accumulate_gradient`` (the rest is "outside").
- ``raw``: ``step`` with the raw-gradient dump selected for the step; the dump is also timed on its own
  inside it.

The steps are those of a real ``Trainer`` built on a zigzag-dataset file. Its ``run()`` for a few steps
is the warm-up, and the per-step times it writes to ``/steps/time`` (steps without test evaluation) are
printed beside the benchmark's ``step`` as a cross-check.

Cases: ``cnn``: the paper's CNN, width 1 (32-64-128) with BatchNorm, on the 4,000 training images of
mnist5k (1 x 32 x 32) prepared by ``zigzag.data.prepare``, micro-batch 1000, lags 8. ``resnet18``:
ResNet-18 width 1 (11.2M parameters) on ``--samples`` random 3 x 32 x 32 images with 10 classes
(default 256 on CPU, 5000 on CUDA), micro-batch 128 on CPU / 1000 on CUDA, lags 8. ``resnet34``: the same
with ResNet-34 width 1 (21.3M parameters), the size of the exact-dot-product target.

Two cases print their own tables instead of the ratios (by default on CUDA only): ``precisions``, each
precision mode's ``Trainer.step`` time on ResNet-18 and the cosine of its gradient with the fp32
gradient (``run_precisions``); ``paper``, every model of presets/paper.yaml at full size and the
whole preset in GPU-hours (``run_paper``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from zigzag import data as zdata
from zigzag import store
from zigzag import trainer as trainer_module
from zigzag.precision import PRECISIONS
from zigzag.runconfig import RunConfig
from zigzag.trainer import Trainer, accumulate_gradient

TARGET_A = 1.05  # GD step / bare forward+backward
TARGET_B = 0.01  # LagRing.push / GD step
TARGET_C = 0.10  # (step + raw dump) / step - 1
LAGS = 8
LR = 0.01  # any value: timings do not depend on it; small, so no run diverges during the benchmark
VARIANTS = ("bare", "nostats", "step", "raw")
LABELS = {
    "bare": "bare forward+backward",
    "nostats": "GD step without lag stats",
    "step": "GD step (Trainer.step)",
    "raw": "GD step + raw dump",
    "outside": "  step outside its fwd+bwd",
    "push": "  LagRing.push inside step",
    "dump": "  raw dump inside step+raw",
    "run": "Trainer.run per step (/steps/time)",
}


# ---------------------------------------------------------------------------------------------
# timing helpers


def make_sync(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ---------------------------------------------------------------------------------------------
# the cases: a dataset file and the Trainer settings


def cnn_dataset(tmp: Path) -> Path:
    path = tmp / "mnist5k.h5"
    zdata.prepare("mnist5k", path)  # 4,000 train / 1,000 test images, 1 x 32 x 32
    return path


def random_dataset(tmp: Path, samples: int, n_test: int = 64, seed: int = 0) -> Path:
    """A zigzag-dataset file of random CIFAR-sized uint8 images (3 x 32 x 32) with 10 random labels."""
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (samples, 3, 32, 32), dtype=np.uint8)
    test_x = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    train_y = rng.integers(0, 10, samples).astype(np.int64)
    test_y = rng.integers(0, 10, n_test).astype(np.int64)
    mean, std = zdata.channel_stats(train_x)
    config = {"source": "random (benchmark)", "n_train": samples, "n_test": n_test, "seed": seed,
              "image_shape": [3, 32, 32]}
    path = tmp / f"random{samples}.h5"
    store.write_dataset(path, store.DatasetArrays(train_x, train_y, test_x, test_y, mean, std, 10, config))
    return path


CASES = ("cnn", "resnet18", "resnet18-sgd", "resnet34")
EXTRA_CASES = ("precisions", "paper")  # not step-overhead cases: their own tables


def case_settings(name: str, args, tmp: Path) -> tuple[dict, str]:
    cuda = args.device == "cuda"
    if name == "cnn":
        dataset = cnn_dataset(tmp)
        settings = dict(dataset=str(dataset), model="cnn", width=1.0, batch_norm=True, micro_batch=1000)
        what = "CNN 32-64-128 + BatchNorm on mnist5k (4000 train images, 1x32x32)"
    elif name == "resnet18":
        samples = args.samples or (5000 if cuda else 256)
        dataset = random_dataset(tmp, samples)
        settings = dict(dataset=str(dataset), model="resnet18", width=1.0, micro_batch=1000 if cuda else 128)
        what = f"ResNet-18 width 1 on {samples} random 3x32x32 images, 10 classes"
    elif name == "resnet34":
        samples = args.samples or (5000 if cuda else 256)
        dataset = random_dataset(tmp, samples)
        settings = dict(dataset=str(dataset), model="resnet34", width=1.0, micro_batch=1000 if cuda else 128)
        what = f"ResNet-34 width 1 on {samples} random 3x32x32 images, 10 classes"
    elif name == "resnet18-sgd":
        batch = args.samples or (5000 if cuda else 256)
        dataset = random_dataset(tmp, 2 * batch)
        settings = dict(dataset=str(dataset), model="resnet18", width=1.0, micro_batch=1000 if cuda else 128,
                        optimizer="sgd", batch_size=batch, epochs=math.ceil(args.warmup_steps / 2))
        what = f"ResNet-18 width 1, SGD batches of {batch} from {2 * batch} random 3x32x32 images (2 per epoch)"
    else:
        raise SystemExit(f"unknown case {name!r}; valid cases: {', '.join(CASES)}")
    return settings, what


# ---------------------------------------------------------------------------------------------
# the timed step: Trainer.step itself, with timers around its parts


def timed(fn, parts: dict, key: str, sync):
    """``fn`` bracketed by device synchronisation, its time stored in ``parts[key]``.

    On CUDA the brackets add no wait that the step does not have anyway: the step synchronises right
    after its forward+backward (``LagRing.push`` copies the statistics to the host).
    """
    def wrapper(*args, **kwargs):
        sync()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        parts[key] = time.perf_counter() - t
        return out
    return wrapper


def no_stats(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stands in for ``LagRing.push`` in the ``nostats`` variant: constant, finite statistics."""
    return torch.ones(LAGS + 1, dtype=torch.float64), torch.zeros(LAGS + 1, dtype=torch.float64)


def gd_step(tr: Trainer, k: int) -> None:
    """One iteration of ``Trainer.run``'s loop without progress line or checkpoint: the real step and its row."""
    tr.recorder.write(tr.step(k))


def bare_pass(tr: Trainer) -> None:
    """Forward + backward over the same micro-batches: the minimum of one full-batch gradient."""
    x, y = tr.batch(0)
    n, mb = len(x), tr.config.micro_batch
    for i in range(0, n, mb):
        F.cross_entropy(tr.model(x[i:i + mb]), y[i:i + mb], reduction="sum").div(n).backward()


# ---------------------------------------------------------------------------------------------
# one case


def run_case(name: str, args, tmp: Path) -> dict:
    settings, what = case_settings(name, args, tmp)
    config = RunConfig.from_dict({**settings, "lr": LR, "steps": args.warmup_steps, "lags": LAGS,
                                  "eval_every": 10 ** 9, "checkpoint_every": 10 ** 9,
                                  "device": args.device, "precision": args.precision, "seed": 0})
    torch.manual_seed(0)
    tr = Trainer(config, tmp / f"{name}_warmup.h5", progress=False)
    device, sync = tr.device, make_sync(tr.device)
    n = len(tr.data.train_x)
    print(f"\n== {name}: {what}\n   {tr.n_params:,} parameters, {n} samples, micro_batch {config.micro_batch}, "
          f"lags {LAGS}, device {device}", flush=True)

    # Warm-up: the real Trainer.run for a few GD steps; its /steps/time gives the cross-check.
    t = time.perf_counter()
    tr.run()
    warm_s = time.perf_counter() - t
    times = store.read_trajectory(tmp / f"{name}_warmup.h5").steps["time"]
    # Steps 1..S-2 are clean (step 0 and the last one evaluate the test set); time[k] - time[k-1] is one
    # whole step k plus the previous row's writer.append.
    run_steps = list(np.diff(times)[:-1]) if len(times) >= 3 else []
    print(f"   warm-up: Trainer.run of {args.warmup_steps} steps in {warm_s:.1f} s", flush=True)

    # The timed steps write into a fresh partial trajectory of the same Trainer, with raw gradients
    # (selected in the ``raw`` variant only); timers wrap the step's parts (see ``timed``).
    parts: dict[str, float] = {}
    tr.raw_selection = 1
    applied = tr.precision.applied()
    applied.__enter__()
    tr.open_trajectory()
    push = timed(tr.recorder.ring.push, parts, "push", sync)
    tr.recorder.ring.push = push
    trainer_module.accumulate_gradient = timed(accumulate_gradient, parts, "fwdbwd", sync)
    tr.recorder.raw.put = timed(tr.recorder.raw.put, parts, "dump", sync)
    k = tr.recorder.step
    gd_step(tr, k)  # warms the dump path
    k += 1

    samples: dict[str, list[float]] = {key: [] for key in (*VARIANTS, "outside", "push", "dump")}
    try:
        for r in range(args.repeats):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for variant in order:
                tr.recorder.raw_steps = 1 if variant == "raw" else None
                tr.recorder.ring.push = no_stats if variant == "nostats" else push
                sync()
                t = time.perf_counter()
                if variant == "bare":
                    bare_pass(tr)
                else:
                    gd_step(tr, k)
                    k += 1
                sync()
                samples[variant].append(time.perf_counter() - t)
                if variant == "step":
                    samples["push"].append(parts["push"])
                    samples["outside"].append(samples["step"][-1] - parts["fwdbwd"])
                if variant == "raw":
                    samples["dump"].append(parts["dump"])
            print(f"   repeat {r + 1}/{args.repeats}: " + ", ".join(
                f"{v} {samples[v][-1]:.3f}s" for v in VARIANTS), flush=True)
    finally:
        trainer_module.accumulate_gradient = accumulate_gradient
        tr.recorder.close()
        applied.__exit__(None, None, None)
    for f in tmp.glob(f"{name}_*.h5*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()

    med = {key: statistics.median(v) for key, v in samples.items() if v}
    spread = {key: (min(v), max(v)) for key, v in samples.items() if v}
    if run_steps:
        med["run"], spread["run"] = statistics.median(run_steps), (min(run_steps), max(run_steps))
        samples["run"] = run_steps
    def paired(num: list[float], den: list[float]) -> float:
        """Median over repeats of the ratio within each repeat: load drift between repeats cancels."""
        return statistics.median(x / y for x, y in zip(num, den))

    ratios = {
        "a": paired(samples["step"], samples["bare"]),
        "a_nostats": paired(samples["nostats"], samples["bare"]),
        # the step's work outside its forward+backward against the bare pass: the low-noise reading of (a)
        "a_timer": 1 + paired(samples["outside"], samples["bare"]),
        "b": paired(samples["push"], samples["step"]),
        "c": paired(samples["raw"], samples["step"]) - 1,
        # the dump against the rest of the same step: the low-noise reading of (c)
        "c_timer": paired(samples["dump"], [r - d for r, d in zip(samples["raw"], samples["dump"])]),
        "run_vs_step": med["run"] / med["step"] if "run" in med else math.nan,
    }
    print_case(name, samples, med, spread, ratios)
    result = {"case": name, "what": what, "params": tr.n_params, "samples": n, "micro_batch": config.micro_batch,
              "median": med, "ratios": ratios}
    del tr
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------
# the paper case: seconds per epoch of each paper model, and the whole preset in GPU-hours

PRESET = Path(__file__).resolve().parents[1] / "presets" / "paper.yaml"
# Images per split of the preset's dataset sources (train, test): the published sizes of the sets.
SOURCE_IMAGES = {"cifar10": (50_000, 10_000), "mnist": (60_000, 10_000), "svhn": (73_257, 26_032)}
EPOCH = 50_000  # "seconds per epoch" are per 50,000 training images


def paper_models(preset: dict) -> dict[tuple, dict]:
    """The preset's distinct (model, batch_norm, micro_batch): what a gradient pass costs depends on these."""
    models = {}
    for run in preset["runs"].values():
        key = (run["model"], run.get("batch_norm", True), run.get("micro_batch", 1000))
        models[key] = dict(model=run["model"], batch_norm=key[1], micro_batch=key[2])
    return models


def time_paper_model(key: tuple, settings: dict, args, tmp: Path) -> dict:
    """Seconds per 50,000-image epoch of Trainer.step, of a test evaluation and of one H v (all per image x 50,000)."""
    from zigzag.sharpness import HessianOperator
    from zigzag.trainer import evaluate

    dataset = random_dataset(tmp, args.paper_images)
    config = RunConfig.from_dict({**settings, "dataset": str(dataset), "width": 1.0, "lr": LR, "lags": LAGS,
                                  "steps": 10 ** 6, "eval_every": 10 ** 9, "checkpoint_every": 10 ** 9,
                                  "device": args.device, "precision": args.precision, "seed": 0})
    tr = Trainer(config, tmp / "paper.h5", progress=False)
    sync, n = make_sync(tr.device), len(tr.data.train_x)
    if tr.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def clock(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    with tr.precision.applied():
        tr.open_trajectory()
        gd_step(tr, 0)  # warm-up
        steps = [clock(lambda k=k: gd_step(tr, k)) for k in range(1, 1 + args.repeats)]
        with tr.precision.autocast():
            forward = clock(lambda: evaluate(tr.model, tr.data.train_x, tr.data.train_y, config.micro_batch))
        vector = torch.randn(tr.n_params, device=tr.device)
        operator = HessianOperator(tr.model, *tr.sharpness_data, config.micro_batch)
        operator(vector)  # a solve's first product builds the graph; the others reuse it
        hvp = clock(lambda: operator(vector))
        tr.recorder.close()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if tr.device.type == "cuda" else math.nan
    scale = EPOCH / n
    result = {"key": key, "epoch_s": statistics.median(steps) * scale, "forward_s": forward * scale,
              "hvp_s": hvp * scale, "params": tr.n_params, "peak_gib": peak}
    tr = None  # frees the model and its ring before the next one
    if args.device == "cuda":
        torch.cuda.empty_cache()
    for f in tmp.glob("paper.h5*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    return result


def preset_hours(preset: dict, timings: dict[tuple, dict]) -> list[dict]:
    """Seconds of every run of the preset (all its seeds) from per-epoch timings of its models.

    Per job: training epochs (GD: steps; SGD: epochs x the images its whole batches cover) x the
    model's seconds per epoch x n_train / 50,000; test evaluations (step 0, every ``eval_every``-th
    and the last) x a forward pass over n_test; sharpness solves (steps 0, K, 2K, ...; refined ones
    left out) x 21 Hessian-vector products cold and 9 warm (about what the default runs take, BENCHMARKS.md)
    over the subset. The seconds
    per epoch are those of CIFAR-shaped images (3 x 32 x 32) for every dataset.
    """
    rows = []
    for name, run in preset["runs"].items():
        key = (run["model"], run.get("batch_norm", True), run.get("micro_batch", 1000))
        t = timings[key]
        n_train, n_test = SOURCE_IMAGES[preset["datasets"][run["dataset"]]["source"]]
        if run.get("optimizer", "gd") == "sgd":
            per_epoch = n_train // run["batch_size"]
            steps, images = run["epochs"] * per_epoch, run["epochs"] * per_epoch * run["batch_size"]
        else:
            steps, images = run["steps"], run["steps"] * n_train
        evals = len(set(range(0, steps, run.get("eval_every", 10))) | {steps - 1})
        seconds = images / EPOCH * t["epoch_s"] + evals * n_test / EPOCH * t["forward_s"]
        every = run.get("sharpness", {}).get("every", "none")
        if every != "none":
            calls = math.ceil(steps / int(every.split(":")[1])) if every.startswith("every:") \
                else len(str(every).split(","))
            hvps = 21 + (calls - 1) * 9
            seconds += hvps * run["sharpness"].get("subset", n_train) / EPOCH * t["hvp_s"]
        seeds = len(run.get("seeds", [0]))
        rows.append({"run": name, "seeds": seeds, "steps": steps, "seconds": seeds * seconds})
    return rows


def run_paper(args, tmp: Path) -> float:
    """Times every model of the preset and prints the per-run and total estimate; returns the hours."""
    preset = yaml.safe_load(PRESET.read_text())
    print(f"\n== paper: each model of {PRESET.name} at width 1 on {args.paper_images} random 3x32x32 images, "
          f"its micro-batch, precision {args.precision}; seconds per {EPOCH:,}-image epoch", flush=True)
    timings = {}
    for key, settings in paper_models(preset).items():
        timings[key] = time_paper_model(key, settings, args, tmp)
        t = timings[key]
        print(f"   {key[0]:9s} bn={str(key[1]):5s} mb {key[2]:5d}  {t['params']:>11,} params  "
              f"step {t['epoch_s']:9.3f} s/epoch  eval fwd {t['forward_s']:8.3f} s/epoch  "
              f"H v {t['hvp_s']:9.3f} s/epoch = {t['hvp_s'] / t['epoch_s']:5.2f} steps  "
              f"peak {t['peak_gib']:.1f} GiB", flush=True)
    rows = preset_hours(preset, timings)
    total = sum(r["seconds"] for r in rows) / 3600
    print(f"\n   {'run':28s} {'seeds':>5s} {'steps':>6s} {'hours':>8s}")
    for r in rows:
        print(f"   {r['run']:28s} {r['seeds']:5d} {r['steps']:6d} {r['seconds'] / 3600:8.3f}")
    print(f"\n   estimate of the whole {PRESET.name}: {total:.2f} hours of this device ({args.device}; "
          f"GPU-hours on a GPU), precision {args.precision}, one job at a time", flush=True)
    return total


# ---------------------------------------------------------------------------------------------
# the precisions case: each precision mode's step time and its gradient against fp32


def run_precisions(args, tmp: Path, model: str = "resnet18", width: float = 1.0) -> list[dict]:
    """Each mode of ``PRECISIONS`` on ``model`` (ResNet-18 width 1 in the benchmark): median seconds of
    ``Trainer.step`` and the cosine of its gradient g_0 (same seed, same initial parameters) with the fp32 gradient.

    The gradient is the step's own: ``accumulate_gradient`` of ``Trainer.step`` under the mode's flags and
    autocast, into the trainer's flat float32 buffer. On a CPU every mode computes in float32 (see
    ``zigzag.precision``), so the cosines are exactly 1 there.
    """
    samples = args.samples or (5000 if args.device == "cuda" else 64)
    micro_batch = 1000 if args.device == "cuda" else 64
    dataset = random_dataset(tmp, samples)
    print(f"\n== precisions: {model} width {width:g} on {samples} random 3x32x32 images, micro_batch {micro_batch}; "
          f"median of {args.repeats} Trainer.step calls per mode, gradient at step 0 against fp32", flush=True)
    rows, reference = [], None
    for mode in PRECISIONS:
        config = RunConfig.from_dict({"dataset": str(dataset), "model": model, "width": width, "lr": LR,
                                      "micro_batch": micro_batch, "lags": LAGS, "steps": 10 ** 6,
                                      "eval_every": 10 ** 9, "checkpoint_every": 10 ** 9, "device": args.device,
                                      "precision": mode, "seed": 0})
        tr = Trainer(config, tmp / f"precision_{mode}.h5", progress=False)
        sync = make_sync(tr.device)
        with tr.precision.applied() as flags:
            x, y = tr.batch(0)
            tr.open_trajectory()
            tr.recorder.gradients.zero_()
            with tr.precision.autocast():
                accumulate_gradient(tr.step_model, x, y, micro_batch)
            grad = tr.recorder.gradients.flat.double().cpu()
            reference = grad if reference is None else reference
            cosine = float(grad @ reference / (grad.norm() * reference.norm()))
            gd_step(tr, 0)  # warm-up (cuDNN autotuning, allocations)
            times = []
            for k in range(1, 1 + args.repeats):
                sync()
                t = time.perf_counter()
                gd_step(tr, k)
                sync()
                times.append(time.perf_counter() - t)
            tr.recorder.close()
        rows.append({"mode": mode, "step_s": statistics.median(times), "cosine": cosine, "flags": flags})
        del tr
        if args.device == "cuda":
            torch.cuda.empty_cache()
    fp32 = rows[0]["step_s"]
    print("\n   | precision | step | vs fp32 | gradient cosine with fp32 | backend flags |\n   |---|---|---|---|---|")
    for r in rows:
        flags = ", ".join(f"{k}={v}" for k, v in r["flags"].items() if k != "device")
        print(f"   | {r['mode']} | {r['step_s']:.3f} s | {r['step_s'] / fp32:.2f}x | {r['cosine']:.6f} | {flags} |",
              flush=True)
    return rows


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def print_case(name, samples, med, spread, ratios) -> None:
    print(f"\n   {'time per step':36s} {'median':>9s} {'min':>9s} {'max':>9s}   n")
    for key in (*VARIANTS, "outside", "push", "dump", "run"):
        if key in med:
            lo, hi = spread[key]
            print(f"   {LABELS[key]:36s} {med[key]:8.3f}s {lo:8.3f}s {hi:8.3f}s  {len(samples[key]):2d}")
    a, b, c = ratios["a"], ratios["b"], ratios["c"]
    print(f"\n   {'ratio (median of per-repeat ratios)':44s} {'value':>8s}   target")
    print(f"   {'(a) GD step / bare forward+backward':44s} {a:8.3f}   <= {TARGET_A:.2f}  {verdict(a, TARGET_A)}")
    print(f"   {'    1 + step outside fwd+bwd / bare (low noise)':44s} {ratios['a_timer']:8.3f}   <= {TARGET_A:.2f}  "
          f"{verdict(ratios['a_timer'], TARGET_A)}")
    print(f"   {'    step without stats / bare (context)':44s} {ratios['a_nostats']:8.3f}")
    print(f"   {'(b) LagRing.push / GD step':44s} {100 * b:7.2f}%   <= {100 * TARGET_B:.0f}%    {verdict(b, TARGET_B)}")
    print(f"   {'(c) (step + raw dump) / step - 1':44s} {100 * c:7.2f}%   <= {100 * TARGET_C:.0f}%   "
          f"{verdict(c, TARGET_C)}")
    print(f"   {'    raw dump timer / rest of step (low noise)':44s} {100 * ratios['c_timer']:7.2f}%   "
          f"<= {100 * TARGET_C:.0f}%   {verdict(ratios['c_timer'], TARGET_C)}")
    print(f"   {'    Trainer.run step / GD step (medians, ~1)':44s} {ratios['run_vs_step']:8.3f}", flush=True)


# ---------------------------------------------------------------------------------------------


def machine_info(device: str) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
             f"{platform.system()} {platform.release()}",
             f"cpu: {cpu}; {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}"]
    if hasattr(os, "getloadavg"):
        lines.append("load average (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(f"gpu: {torch.cuda.get_device_name(0)} ({props.total_memory / 2 ** 30:.0f} GiB), "
                     f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
                     f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                     f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5 on CPU, 20 on CUDA)")
    parser.add_argument("--cases", default=None,
                        help=f"comma-separated: {', '.join((*CASES, *EXTRA_CASES))} (default: all; "
                             f"{' and '.join(EXTRA_CASES)} only on cuda)")
    parser.add_argument("--precision", choices=PRECISIONS, default=RunConfig.precision,
                        help="the runs' precision setting (default: the run default)")
    parser.add_argument("--paper-images", type=int, default=None,
                        help="random images per paper-case pass (default 50000 on cuda, 32 on cpu)")
    parser.add_argument("--samples", type=int, default=None,
                        help="resnet18 samples (default 256 on CPU, 5000 on CUDA); cnn always uses mnist5k's 4000")
    parser.add_argument("--warmup-steps", type=int, default=4,
                        help="steps of the warm-up Trainer.run (>= 3: steps 1..S-2 give the cross-check)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice, usually the number of cores)")
    parser.add_argument("--tmpdir", default=None, help="folder for the temporary HDF5 files (default: $TMPDIR)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA GPU is visible")
    if args.repeats is None:
        args.repeats = 20 if args.device == "cuda" else 5
    if args.repeats < 1 or args.warmup_steps < 3:
        raise SystemExit("--repeats must be >= 1 and --warmup-steps >= 3")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cases is None:
        args.cases = ",".join((*CASES, *EXTRA_CASES) if args.device == "cuda" else CASES)
    if args.paper_images is None:
        args.paper_images = 50_000 if args.device == "cuda" else 32
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in (*CASES, *EXTRA_CASES)]
    if unknown or not cases:
        raise SystemExit(f"unknown case(s) {', '.join(unknown) or '(none given)'}; valid cases: "
                         f"{', '.join((*CASES, *EXTRA_CASES))}")

    print("bench_step: zigzag GD step vs bare forward+backward (medians of "
          f"{args.repeats} repeats, variants alternated), precision {args.precision}")
    for line in machine_info(args.device):
        print("  " + line)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the temporary folder is removed
    tmp = Path(tempfile.mkdtemp(prefix="zigzag-bench-", dir=args.tmpdir))
    print(f"  temporary HDF5 files in {tmp}", flush=True)
    t_start = time.perf_counter()
    results = []
    try:
        for name in cases:
            if name == "paper":
                run_paper(args, tmp)
            elif name == "precisions":
                run_precisions(args, tmp)
            else:
                results.append(run_case(name, args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if not results:
        return
    print(f"\nsummary ({args.device}, {torch.get_num_threads()} threads, {args.repeats} repeats, total "
          f"{time.perf_counter() - t_start:.0f} s): times are medians; ratios are medians of per-repeat ratios\n")
    print("| case | params | samples / micro-batch | bare fwd+bwd | step w/o stats | GD step | step + raw dump "
          "| (a) step/bare <= 1.05 | (b) push/step <= 1% | (c) dump overhead <= 10% |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        m, r = res["median"], res["ratios"]
        print(f"| {res['case']} | {res['params']:,} | {res['samples']} / {res['micro_batch']} "
              f"| {m['bare']:.3f} s | {m['nostats']:.3f} s | {m['step']:.3f} s | {m['raw']:.3f} s "
              f"| {r['a']:.3f} {verdict(r['a'], TARGET_A)} "
              f"(timer {r['a_timer']:.3f} {verdict(r['a_timer'], TARGET_A)}) "
              f"| {100 * r['b']:.2f}% ({1e3 * m['push']:.0f} ms) {verdict(r['b'], TARGET_B)} "
              f"| {100 * r['c']:+.2f}% {verdict(r['c'], TARGET_C)} (timer {100 * r['c_timer']:.2f}% "
              f"{verdict(r['c_timer'], TARGET_C)}) |")
    if hasattr(os, "getloadavg"):
        print("\nload average at the end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
