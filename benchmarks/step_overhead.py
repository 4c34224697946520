"""The step-overhead cases of ``bench_step.py`` (cnn, resnet18, resnet18-sgd, resnet34): what zigzag's GD step
costs next to the bare forward+backward pass (docs/design.md, "Tests and measurements").

Every part is timed through its own interface; nothing of what is timed is replaced. In every repeat, in an order
that rotates from repeat to repeat (so drift within a repeat hits all alike):

- ``bare``: forward + backward only over the step's samples and micro-batches, under the run's autocast:
  ``F.cross_entropy(model(xb), yb, reduction="sum").div(n).backward()`` per micro-batch, nothing else.
- ``step``: one iteration of ``Trainer.run``'s loop for a step without test evaluation, sharpness, progress
  output or checkpoint: ``Trainer.step`` and ``Recorder.write`` of its row, on a Trainer without raw gradients.
- ``push``: ``LagRing.push`` of a gradient of that Trainer, called on a ring of the Trainer's size at its fill
  (loaded from the Trainer's ring): the lag statistics' part of the step.
- ``raw``: the same step on a second Trainer of the same settings that stores every step's raw gradient
  (``raw_gradients: every:1``); its background writer is drained after the timer (``Recorder.flush``), so
  that its HDF5 write does not fall into the next variant's time.
- ``dump``: ``RawGradientWriter.put`` of that gradient into a writer of its own, drained after the timer:
  the dump's cost on the step's path.

Ratios (each the median over repeats of the ratio within one repeat, paired):

(a) step / bare                                                        target <= 1.05
(b) push / step                                                        target <= 1 %
(c) raw / step - 1, and its low-noise reading dump / step              target <= 10 %

"Step without lag statistics" is step - push (not a variant of its own). The warm-up is a third Trainer's own
``run()`` of a few steps; the per-step times it writes to ``/steps/time`` are printed beside ``step`` as a
cross-check (their ratio should be about 1).
"""

from __future__ import annotations

import itertools
import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from setups import LAGS, TIMED_STEPS, cnn_dataset, random_dataset, take_step, trainer
from timing import clock, make_sync, paired, rotated

from zigzag import store
from zigzag.lagstats import LagRing
from zigzag.rawdump import RawGradientWriter

CASES = ("cnn", "resnet18", "resnet18-sgd", "resnet34")
TARGET_A = 1.05  # GD step / bare forward+backward
TARGET_B = 0.01  # LagRing.push / GD step
TARGET_C = 0.10  # (step + raw dump) / step - 1
VARIANTS = ("bare", "step", "push", "raw", "dump")
LABELS = {
    "bare": "bare forward+backward",
    "step": "GD step (Trainer.step + row)",
    "push": "LagRing.push (same ring size)",
    "raw": "GD step + raw dump",
    "dump": "RawGradientWriter.put",
    "nostats": "GD step - push",
    "run": "Trainer.run per step (/steps/time)",
}


def case_settings(name: str, args, tmp: Path) -> tuple[dict, int, str]:
    """The case's settings, its batches per epoch (SGD; 1 for GD) and what it trains, in words."""
    cuda = args.device == "cuda"
    samples = args.samples or (5000 if cuda else 256)
    micro_batch = 1000 if cuda else 128
    if name == "cnn":
        settings = dict(dataset=str(cnn_dataset(tmp)), model="cnn", width=1.0, batch_norm=True, micro_batch=1000)
        return settings, 1, "CNN 32-64-128 + BatchNorm on mnist5k (4000 train images, 1x32x32)"
    if name in ("resnet18", "resnet34"):
        settings = dict(dataset=str(random_dataset(tmp, samples)), model=name, width=1.0, micro_batch=micro_batch)
        return settings, 1, f"{'ResNet-18' if name == 'resnet18' else 'ResNet-34'} width 1 on {samples} random " \
                            f"3x32x32 images, 10 classes"
    if name == "resnet18-sgd":
        settings = dict(dataset=str(random_dataset(tmp, 2 * samples)), model="resnet18", width=1.0,
                        micro_batch=micro_batch, optimizer="sgd", batch_size=samples)
        return settings, 2, f"ResNet-18 width 1, SGD batches of {samples} from {2 * samples} random 3x32x32 " \
                            f"images (2 per epoch)"
    raise SystemExit(f"unknown case {name!r}; valid cases: {', '.join(CASES)}")


def length(settings: dict, per_epoch: int, steps: int) -> dict:
    """The setting that makes a run of ``steps`` steps at least: GD ``steps``, SGD ``epochs``."""
    return {"epochs": math.ceil(steps / per_epoch)} if settings.get("optimizer") == "sgd" else {"steps": steps}


def bare_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch: int) -> None:
    """Forward + backward over the micro-batches of (x, y): the minimum of one full-batch gradient."""
    n = len(x)
    for i in range(0, n, micro_batch):
        F.cross_entropy(model(x[i:i + micro_batch]), y[i:i + micro_batch], reduction="sum").div(n).backward()


def warm_up(name: str, settings: dict, per_epoch: int, args, tmp: Path) -> list[float]:
    """A Trainer's own ``run()`` of ``--warmup-steps`` steps; returns the per-step seconds of its steps without
    test evaluation (steps 1..S-2 of ``/steps/time``: each a whole step plus the previous row's write)."""
    out = tmp / f"{name}_warmup.h5"
    tr = trainer(settings, args, out, **length(settings, per_epoch, args.warmup_steps))
    print(f"   {tr.n_params:,} parameters, {len(tr.data.train_x)} samples, micro_batch {tr.config.micro_batch}, "
          f"lags {LAGS}, device {tr.device}", flush=True)
    start = time.perf_counter()
    tr.run()
    print(f"   warm-up: Trainer.run of {tr.total_steps} steps in {time.perf_counter() - start:.1f} s", flush=True)
    times = store.read_trajectory(out).steps["time"]
    return list(np.diff(times)[:-1]) if len(times) >= 3 else []


def time_variants(name: str, step_tr, raw_tr, args, tmp: Path) -> tuple[dict[str, list[float]], int]:
    """Seconds of every variant in each repeat (``step_tr``: the Trainer without raw gradients, ``raw_tr``: the
    one with them), and the samples a step takes."""
    sync, micro_batch = make_sync(step_tr.device), step_tr.config.micro_batch
    samples: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with step_tr.precision.applied():  # both Trainers run in the same precision mode
        step_tr.open_trajectory()
        raw_tr.open_trajectory()
        for tr in (step_tr, raw_tr):  # step 0 evaluates the test set: warms that path, untimed
            take_step(tr)
        x, y = step_tr.batches(0)
        gradient = step_tr.recorder.gradients.flat.clone()
        ring = LagRing(gradient.numel(), LAGS, step_tr.device)
        ring.load_state_dict(step_tr.recorder.ring.state_dict())
        dump_file = store.TrajectoryWriter.create(tmp / f"{name}_dump.h5", {}, n_params=gradient.numel(),
                                                  n_train=len(x), lags=LAGS, raw_dtype=raw_tr.config.raw_dtype)
        dump = RawGradientWriter(dump_file, gradient.numel(), raw_tr.config.raw_dtype, step_tr.device)
        dump_steps = itertools.count()

        def bare() -> None:
            with step_tr.precision.autocast():
                bare_pass(step_tr.step_model, x, y, micro_batch)

        variants = {"bare": bare, "step": lambda: take_step(step_tr), "push": lambda: ring.push(gradient),
                    "raw": lambda: take_step(raw_tr), "dump": lambda: dump.put(next(dump_steps), gradient)}
        drains = {"raw": raw_tr.recorder.flush, "dump": dump.drain}  # outside the timers
        try:
            for r in range(args.repeats):
                for variant in rotated(VARIANTS, r):
                    samples[variant].append(clock(variants[variant], sync))
                    drains.get(variant, lambda: None)()
                print(f"   repeat {r + 1}/{args.repeats}: " + ", ".join(
                    f"{v} {samples[v][-1]:.3f}s" for v in VARIANTS), flush=True)
        finally:
            dump.close()
            dump_file.close()
            step_tr.recorder.close()
            raw_tr.recorder.close()
    return samples, len(x)


def run_case(name: str, args, tmp: Path) -> dict:
    """Times the variants of one case over ``args.repeats`` repeats; prints and returns medians and ratios."""
    settings, per_epoch, what = case_settings(name, args, tmp)
    print(f"\n== {name}: {what}", flush=True)
    run_steps = warm_up(name, settings, per_epoch, args, tmp)
    timed = length(settings, per_epoch, TIMED_STEPS)
    step_tr = trainer(settings, args, tmp / f"{name}_step.h5", **timed)
    raw_tr = trainer(settings, args, tmp / f"{name}_raw.h5", raw_gradients="every:1", **timed)
    samples, n = time_variants(name, step_tr, raw_tr, args, tmp)
    samples["nostats"] = [s - p for s, p in zip(samples["step"], samples["push"])]
    if run_steps:
        samples["run"] = run_steps
    med = {key: statistics.median(v) for key, v in samples.items()}
    spread = {key: (min(v), max(v)) for key, v in samples.items()}
    ratios = {
        "a": paired(samples["step"], samples["bare"]),
        "a_nostats": paired(samples["nostats"], samples["bare"]),
        "b": paired(samples["push"], samples["step"]),
        "c": paired(samples["raw"], samples["step"]) - 1,
        "c_timer": paired(samples["dump"], samples["step"]),
        "run_vs_step": med["run"] / med["step"] if "run" in med else math.nan,
    }
    print_case(samples, med, spread, ratios)
    result = {"case": name, "what": what, "params": step_tr.n_params, "samples": n,
              "micro_batch": step_tr.config.micro_batch, "median": med, "ratios": ratios}
    cuda = step_tr.device.type == "cuda"
    del step_tr, raw_tr  # frees the models and their rings before the next case
    if cuda:
        torch.cuda.empty_cache()
    for f in tmp.glob(f"{name}_*.h5*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    return result


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def print_case(samples, med, spread, ratios) -> None:
    print(f"\n   {'time per step':36s} {'median':>9s} {'min':>9s} {'max':>9s}   n")
    for key in (*VARIANTS, "nostats", "run"):
        if key in med:
            lo, hi = spread[key]
            print(f"   {LABELS[key]:36s} {med[key]:8.3f}s {lo:8.3f}s {hi:8.3f}s  {len(samples[key]):2d}")
    a, b, c = ratios["a"], ratios["b"], ratios["c"]
    print(f"\n   {'ratio (median of per-repeat ratios)':44s} {'value':>8s}   target")
    print(f"   {'(a) GD step / bare forward+backward':44s} {a:8.3f}   <= {TARGET_A:.2f}  {verdict(a, TARGET_A)}")
    print(f"   {'    (step - push) / bare (context)':44s} {ratios['a_nostats']:8.3f}")
    print(f"   {'(b) LagRing.push / GD step':44s} {100 * b:7.2f}%   <= {100 * TARGET_B:.0f}%    {verdict(b, TARGET_B)}")
    print(f"   {'(c) (step + raw dump) / step - 1':44s} {100 * c:7.2f}%   <= {100 * TARGET_C:.0f}%   "
          f"{verdict(c, TARGET_C)}")
    print(f"   {'    RawGradientWriter.put / step (low noise)':44s} {100 * ratios['c_timer']:7.2f}%   "
          f"<= {100 * TARGET_C:.0f}%   {verdict(ratios['c_timer'], TARGET_C)}")
    print(f"   {'    Trainer.run step / GD step (medians, ~1)':44s} {ratios['run_vs_step']:8.3f}", flush=True)


def print_summary(results: list[dict]) -> None:
    """The Markdown table of BENCHMARKS.md, one row per case."""
    print("| case | params | samples / micro-batch | bare fwd+bwd | step - push | GD step | step + raw dump "
          "| (a) step/bare <= 1.05 | (b) push/step <= 1% | (c) dump overhead <= 10% |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        m, r = res["median"], res["ratios"]
        print(f"| {res['case']} | {res['params']:,} | {res['samples']} / {res['micro_batch']} "
              f"| {m['bare']:.3f} s | {m['nostats']:.3f} s | {m['step']:.3f} s | {m['raw']:.3f} s "
              f"| {r['a']:.3f} {verdict(r['a'], TARGET_A)} "
              f"| {100 * r['b']:.2f}% ({1e3 * m['push']:.0f} ms) {verdict(r['b'], TARGET_B)} "
              f"| {100 * r['c']:+.2f}% {verdict(r['c'], TARGET_C)} (put {100 * r['c_timer']:.2f}% "
              f"{verdict(r['c_timer'], TARGET_C)}) |")
