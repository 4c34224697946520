"""The ``precisions`` case of ``bench_step.py``: each precision mode's step time and its gradient against fp32."""

from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path

import torch
from setups import TIMED_STEPS, random_dataset, take_step, trainer
from timing import clock, make_sync

from zigzag.runchoices import PRECISIONS
from zigzag.step import accumulate_gradient


def run_precisions(args, tmp: Path, model: str = "resnet18", width: float = 1.0) -> list[dict]:
    """Each mode of ``PRECISIONS`` on ``model`` (ResNet-18 width 1 in the benchmark): median seconds of
    ``Trainer.step`` and the cosine of its gradient g_0 (same seed, same initial parameters) with the fp32 gradient.

    The gradient is the step's own: ``accumulate_gradient`` on step 0's samples under the mode's flags and
    autocast, into the Recorder's flat float32 buffer. On a CPU every mode computes in float32 (see
    ``zigzag.precision``), so the cosines are exactly 1 there.
    """
    samples = args.samples or (5000 if args.device == "cuda" else 64)
    micro_batch = 1000 if args.device == "cuda" else 64
    dataset = random_dataset(tmp, samples)
    print(f"\n== precisions: {model} width {width:g} on {samples} random 3x32x32 images, micro_batch {micro_batch}; "
          f"median of {args.repeats} Trainer.step calls per mode, gradient at step 0 against fp32", flush=True)
    rows, reference = [], None
    for mode in PRECISIONS:
        settings = {"dataset": str(dataset), "model": model, "width": width, "micro_batch": micro_batch,
                    "steps": TIMED_STEPS}
        tr = trainer(settings, args, tmp / f"precision_{mode}.h5", precision=mode)
        sync = make_sync(tr.device)
        with tr.precision.applied() as flags:
            x, y = tr.batches(0)
            tr.open_trajectory()
            tr.recorder.gradients.zero_()
            with tr.precision.autocast():
                accumulate_gradient(tr.step_model, x, y, micro_batch)
            grad = tr.recorder.gradients.flat.double().cpu()
            reference = grad if reference is None else reference
            cosine = float(grad @ reference / (grad.norm() * reference.norm()))
            take_step(tr)  # warm-up (cuDNN autotuning, allocations)
            times = [clock(partial(take_step, tr), sync) for _ in range(args.repeats)]
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
