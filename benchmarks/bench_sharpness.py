"""Cost of the sharpness (top Hessian eigenvalue) relative to a GD step, as the pipeline runs it.

Trains the default config's sharpness runs for a few dozen steps with sharpness every K steps and
reads the per-step wall clock from the trajectory (``/steps/time``): a step without sharpness is the
GD step; a step with it is GD step + one Lanczos solve (the first one cold, later ones warm-started
from the previous eigenvector). Prints, per run: step time, cold and warm cost per call in GD steps,
Hessian-vector products per call, and the total overhead at the run's K over its full length.
Also, per run: one Hessian-vector product of a solve (through the gradient graph a ``HessianOperator``
built once) and the first product of a solve (the graph's build included) against one gradient pass over
the same sharpness subset (``accumulate_gradient`` with the run's micro-batch; medians of ``--repeats``),
the unit the paper preset's sharpness cost is stated in. ``--hvp-only`` prints only that.

    python benchmarks/bench_sharpness.py [--device cpu|cuda] [--threads N] [--hvp-only] [--repeats N]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from timing import make_sync, median_time

from zigzag import data, store
from zigzag.runconfig import RunConfig
from zigzag.sharpness import HessianOperator
from zigzag.step import accumulate_gradient
from zigzag.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
MEASURED_STEPS = {"cnn_lr0.1": 40, "resnet18_lr0.1": 30, "vgg16_lr0.01": 41}


def measure(name: str, run: dict, dataset: str, device: str, folder: Path) -> dict:
    every = int(run["sharpness"]["every"].split(":")[1])
    steps = MEASURED_STEPS[name]
    settings = {**run, "dataset": dataset, "steps": steps, "device": device, "eval_every": 10_000,
                "checkpoint_every": 10_000}
    out = folder / f"{name}.h5"
    Trainer(RunConfig.from_dict(settings), out, progress=False).run()
    traj = store.read_trajectory(out)
    dt = np.diff(np.concatenate([[0.0], traj.steps["time"]]))
    with_sharpness = np.isfinite(traj.steps["sharpness"])
    plain = float(np.median(dt[1:][~with_sharpness[1:]]))  # step 0 carries warm-up costs
    calls = np.flatnonzero(with_sharpness)
    cold = (dt[calls[0]] - plain) / plain
    warm = float(np.median((dt[calls[1:]] - plain) / plain))
    hvps = traj.steps["sharpness_hvps"][calls]
    full_steps = run["steps"]
    n_calls = math.ceil(full_steps / every)
    overhead = (cold + (n_calls - 1) * warm) / full_steps
    return {"run": name, "K": every, "subset": run["sharpness"].get("subset", "all"), "step_s": plain,
            "cold_steps": cold, "warm_steps": warm, "hvps_cold": int(hvps[0]), "hvps_warm": float(np.median(hvps[1:])),
            "overhead": overhead, "full_steps": full_steps}


def hvp_cost(name: str, run: dict, dataset: str, device: str, folder: Path, repeats: int) -> dict:
    """Seconds of one H v of a solve, of a solve's first one (graph built) and of one gradient pass over the
    run's sharpness subset, at initialisation."""
    settings = {**run, "dataset": dataset, "device": device}
    trainer = Trainer(RunConfig.from_dict(settings), folder / f"{name}_hvp.h5", progress=False)
    x, y = trainer.sharpness.x, trainer.sharpness.y
    mb = trainer.config.micro_batch
    vector = torch.randn(trainer.n_params, generator=torch.Generator().manual_seed(0)).to(trainer.device)
    sync = make_sync(trainer.device)

    def gradient_pass():
        trainer.model.zero_grad()
        accumulate_gradient(trainer.model, x, y, mb)

    with trainer.precision.applied():
        grad_s = median_time(gradient_pass, sync, repeats)
        first_s = median_time(lambda: HessianOperator(trainer.model, x, y, mb)(vector), sync, repeats)
        operator = HessianOperator(trainer.model, x, y, mb)
        hvp_s = median_time(lambda: operator(vector), sync, repeats)
    return {"run": name, "subset": len(x), "grad_s": grad_s, "hvp_s": hvp_s, "first_s": first_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hvp-only", action="store_true", help="only the H v / gradient pass ratio")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the H v ratio")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = config["datasets"]["mnist500"]
        dataset = str(folder / "mnist500.h5")
        data.prepare(spec["source"], dataset, train_size=spec["train_size"], seed=spec["seed"])
        costs = [hvp_cost(name, config["runs"][name], dataset, args.device, folder, args.repeats)
                 for name in MEASURED_STEPS]
        rows = [] if args.hvp_only else [measure(name, config["runs"][name], dataset, args.device, folder)
                                         for name in MEASURED_STEPS]
    print(f"device {args.device}, torch {torch.__version__}, {args.threads} threads")
    print("run              subset  gradient pass     H v   H v in gradient passes  first H v of a solve (graph built)")
    for c in costs:
        ratio, first = c["hvp_s"] / c["grad_s"], c["first_s"] / c["grad_s"]
        print(f"{c['run']:<15} {c['subset']:>6}  {c['grad_s']:12.3f}s  {c['hvp_s']:6.3f}s  {ratio:22.2f}  "
              f"{c['first_s']:.3f}s = {first:.2f}")
    if not rows:
        return
    print("run              K  subset  GD step  call cold  call warm  HVPs cold/warm  overhead at K over the run")
    for r in rows:
        print(f"{r['run']:<15} {r['K']:>2}  {r['subset']:>6}  {r['step_s']:6.3f}s  {r['cold_steps']:6.1f} st  "
              f"{r['warm_steps']:6.1f} st  {r['hvps_cold']:>5} / {r['hvps_warm']:<5.0f}  "
              f"{100 * r['overhead']:5.0f}% of {r['full_steps']} steps")


if __name__ == "__main__":
    main()
