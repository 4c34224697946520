"""Per-step overhead of zigzag's GD step against the bare forward+backward pass, the precision modes, and the
paper preset's hours on this device (docs/design.md, "Tests and measurements").

    python benchmarks/bench_step.py [--device cpu|cuda] [--repeats N] [--cases cnn,resnet18,...] [--samples N]

The step-overhead cases (``step_overhead.py``; its docstring says what each variant times) print, per case,
ratios of times measured on the same machine in the same process:

(a) GD step / bare forward+backward over the same samples            target <= 1.05
(b) LagRing.push / GD step                                            target <= 1 %
(c) (GD step + raw-gradient dump) / GD step - 1                        target <= 10 %

Times are medians over ``--repeats``; each ratio is the median over repeats of the ratio measured within one
repeat (paired), the variants' order rotating from repeat to repeat (``timing.py``).

Cases: ``cnn``: the paper's CNN, width 1 (32-64-128) with BatchNorm, on the 4,000 training images of
mnist5k (1 x 32 x 32) prepared by ``zigzag.data.prepare``, micro-batch 1000, lags 8. ``resnet18``:
ResNet-18 width 1 (11.2M parameters) on ``--samples`` random 3 x 32 x 32 images with 10 classes
(default 256 on CPU, 5000 on CUDA), micro-batch 128 on CPU / 1000 on CUDA, lags 8. ``resnet18-sgd``: the same
model, SGD batches of ``--samples`` from twice as many images. ``resnet34``: ResNet-34 width 1 (21.3M
parameters), the size of the exact-dot-product target.

Two cases print their own tables instead of the ratios (by default on CUDA only): ``precisions``
(``precisions.py``), each precision mode's ``Trainer.step`` time on ResNet-18 and the cosine of its gradient
with the fp32 gradient; ``paper`` (``paper_estimate.py``), every model of presets/paper.yaml at full size and
the whole preset in hours of the device (``zigzag.estimate.preset_hours``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from paper_estimate import run_paper
from precisions import run_precisions
from step_overhead import CASES, print_summary, run_case

from zigzag.runchoices import PRECISIONS
from zigzag.runconfig import RunConfig

EXTRA_CASES = ("precisions", "paper")  # not step-overhead cases: their own tables


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


def parse_args(argv=None) -> argparse.Namespace:
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
                        help="resnet samples (default 256 on CPU, 5000 on CUDA); cnn always uses mnist5k's 4000")
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
    if args.cases is None:
        args.cases = ",".join((*CASES, *EXTRA_CASES) if args.device == "cuda" else CASES)
    if args.paper_images is None:
        args.paper_images = 50_000 if args.device == "cuda" else 32
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in (*CASES, *EXTRA_CASES)]
    if unknown or not args.cases:
        raise SystemExit(f"unknown case(s) {', '.join(unknown) or '(none given)'}; valid cases: "
                         f"{', '.join((*CASES, *EXTRA_CASES))}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
        for name in args.cases:
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
    print_summary(results)
    if hasattr(os, "getloadavg"):
        print("\nload average at the end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
