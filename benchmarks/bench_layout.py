"""CPU cost of a gradient pass and of a Hessian-vector product in the default layout and in channels_last.

For each default model (width as in config.yaml, 500 one-channel 32 x 32 images, one thread): CPU seconds of
``accumulate_gradient`` with the model and images in the default (contiguous) layout and with both in
channels_last, as the trainer puts them on a CPU, and of one product of a built ``HessianOperator`` (which
computes in the default layout whatever the model's). Medians of ``--repeats`` after one warm-up, the layouts
interleaved; prints the channels_last / default ratio.

    python benchmarks/bench_layout.py [--models cnn resnet18 vgg16 resnet34] [--repeats 3] [--images 500]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from zigzag.models import build_model
from zigzag.sharpness import HessianOperator
from zigzag.step import accumulate_gradient

ROOT = Path(__file__).resolve().parents[1]
# each model's width in config.yaml (the default's runs use one width per model)
WIDTHS = {run["model"]: run["width"] for run in yaml.safe_load((ROOT / "config.yaml").read_text())["runs"].values()}
IMAGES = 500


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(WIDTHS), choices=list(WIDTHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=IMAGES, help="random images, one micro-batch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    n = args.images
    x, y = torch.randn(n, 1, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    print(f"torch {torch.__version__}, 1 thread, {n} images, CPU seconds (median of {args.repeats})")
    print("model      default step  channels_last step  ratio   H v (built operator)")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, width=WIDTHS[name], in_channels=1, image_size=32, batch_norm=name != "cnn")
        last = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x_last = x.contiguous(memory_format=torch.channels_last)
        operator = HessianOperator(last, x_last, y, n)
        vector = torch.randn(sum(p.numel() for p in model.parameters()), generator=generator)
        times = {"default": [], "channels_last": [], "hvp": []}
        for _ in range(args.repeats + 1):
            times["default"].append(cpu_seconds(lambda: accumulate_gradient(model, x, y, n)))
            times["channels_last"].append(cpu_seconds(lambda: accumulate_gradient(last, x_last, y, n)))
            times["hvp"].append(cpu_seconds(lambda: operator(vector)))
        median = {key: float(np.median(values[1:])) for key, values in times.items()}
        print(f"{name:<10} {median['default']:11.3f}s  {median['channels_last']:17.3f}s  "
              f"{median['channels_last'] / median['default']:5.2f}  {median['hvp']:8.3f}s")


if __name__ == "__main__":
    main()
