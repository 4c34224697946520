"""The ``paper`` case of ``bench_step.py``: seconds per epoch of each model of presets/paper.yaml at full size,
and the whole preset in hours of the device (``zigzag.estimate.preset_hours``)."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import torch
import yaml
from setups import TIMED_STEPS, random_dataset, take_step, trainer
from timing import clock, make_sync

from zigzag.estimate import EPOCH, preset_hours, preset_runs, timing_key
from zigzag.sharpness import HessianOperator
from zigzag.step import evaluate

PRESET = Path(__file__).resolve().parents[1] / "presets" / "paper.yaml"


def paper_models(preset: dict) -> dict[tuple, dict]:
    """The preset's distinct ``timing_key``s (model, batch_norm, micro_batch), each with its settings."""
    return {timing_key(run): dict(model=run.model, batch_norm=run.batch_norm, micro_batch=run.micro_batch)
            for run, _ in preset_runs(preset).values()}


def time_paper_model(settings: dict, args, tmp: Path) -> dict:
    """Seconds per 50,000-image epoch of Trainer.step, of a test evaluation and of one H v (all per image x 50,000)."""
    dataset = random_dataset(tmp, args.paper_images)
    tr = trainer({**settings, "dataset": str(dataset), "width": 1.0, "steps": TIMED_STEPS}, args, tmp / "paper.h5")
    sync, n, micro_batch = make_sync(tr.device), len(tr.data.train_x), tr.config.micro_batch
    if tr.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tr.precision.applied():
        tr.open_trajectory()
        take_step(tr)  # warm-up
        steps = [clock(lambda: take_step(tr), sync) for _ in range(args.repeats)]
        with tr.precision.autocast():
            forward = clock(lambda: evaluate(tr.model, tr.data.train_x, tr.data.train_y, micro_batch), sync)
        vector = torch.randn(tr.n_params, device=tr.device)
        operator = HessianOperator(tr.model, tr.sharpness.x, tr.sharpness.y, micro_batch)
        operator(vector)  # a solve's first product builds the graph; the others reuse it
        hvp = clock(lambda: operator(vector), sync)
        tr.recorder.close()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if tr.device.type == "cuda" else math.nan
    scale = EPOCH / n
    result = {"epoch_s": statistics.median(steps) * scale, "forward_s": forward * scale,
              "hvp_s": hvp * scale, "params": tr.n_params, "peak_gib": peak}
    tr = None  # frees the model and its ring before the next one
    if args.device == "cuda":
        torch.cuda.empty_cache()
    for f in tmp.glob("paper.h5*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    return result


def run_paper(args, tmp: Path, preset_path: Path = PRESET) -> float:
    """Times every model of the preset and prints the per-run and total estimate; returns the hours."""
    preset = yaml.safe_load(preset_path.read_text())
    print(f"\n== paper: each model of {preset_path.name} at width 1 on {args.paper_images} random 3x32x32 images, "
          f"its micro-batch, precision {args.precision}; seconds per {EPOCH:,}-image epoch", flush=True)
    timings = {}
    for key, settings in paper_models(preset).items():
        timings[key] = t = time_paper_model(settings, args, tmp)
        print(f"   {key[0]:9s} bn={str(key[1]):5s} mb {key[2]:5d}  {t['params']:>11,} params  "
              f"step {t['epoch_s']:9.3f} s/epoch  eval fwd {t['forward_s']:8.3f} s/epoch  "
              f"H v {t['hvp_s']:9.3f} s/epoch = {t['hvp_s'] / t['epoch_s']:5.2f} steps  "
              f"peak {t['peak_gib']:.1f} GiB", flush=True)
    rows = preset_hours(preset, timings)
    total = sum(r["seconds"] for r in rows if r["sweep"] is None) / 3600
    print(f"\n   {'run':28s} {'seeds':>5s} {'steps':>6s} {'hours':>8s}")
    for r in rows:
        print(f"   {r['run']:28s} {r['seeds']:5d} {r['steps']:6d} {r['seconds'] / 3600:8.3f}")
    print(f"\n   estimate of the whole {preset_path.name}: {total:.2f} hours of this device ({args.device}; "
          f"GPU-hours on a GPU), precision {args.precision}, one job at a time; its sweeps apart:", flush=True)
    for sweep in dict.fromkeys(r["sweep"] for r in rows if r["sweep"] is not None):
        hours = sum(r["seconds"] for r in rows if r["sweep"] == sweep) / 3600
        print(f"   sweep {sweep} (all_sweeps): {hours:.2f} hours", flush=True)
    return total
