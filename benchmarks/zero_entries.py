"""Which parameters hold the exact zeros of a run's raw gradients, and the three sign-flip counts at its zigzag steps.

Reads a trajectory trained with ``--raw-gradients every:1`` and, at the steps k whose adjacent correlation
mu(k-1, k) is below ``--below``, prints per parameter tensor (``model.named_parameters()`` order, the order of
the flat gradient) its share of exact zeros in g_k, whole zero output units, and, over all entries: the zero
share and the opposite-sign share among all entries, among those non-zero in both, and weighted by
|g_k g_(k-1)|. Usage: python benchmarks/zero_entries.py RUN.h5 [--below -0.85]
"""

import argparse
import json

import h5py
import numpy as np

from zigzag.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trajectory")
    parser.add_argument("--below", type=float, default=-0.85, help="adjacent correlation of the steps read")
    args = parser.parse_args()
    with h5py.File(args.trajectory, "r") as f:
        config = json.loads(f.attrs["config"])
        dot = f["steps/dot"][()]
        raw_steps = list(f["raw/steps"][()])
        mu = dot[1:, 1] / np.sqrt(dot[1:, 0] * dot[:-1, 0])
        steps = [k for k in range(1, len(dot)) if mu[k - 1] < args.below and k in raw_steps and k - 1 in raw_steps]
        grads = {k: f["raw/gradients"][raw_steps.index(k)].astype(np.float64) for s in steps for k in (s - 1, s)}
    shape = config["dataset_config"]["image_shape"]
    model = build_model(config["model"], width=config["width"], in_channels=shape[0], image_size=shape[1],
                        batch_norm=config["batch_norm"])
    print(f"{len(steps)} steps with mu(k-1, k) < {args.below}: {steps}")
    print(f"{'parameter':24s} {'shape':>18s} {'entries':>9s} {'zero share':>10s} {'zero units':>10s}")
    offset, total = 0, sum(p.numel() for p in model.parameters())
    for name, p in model.named_parameters():
        n = p.numel()
        zero = np.stack([grads[k][offset:offset + n] == 0 for k in steps]).reshape(len(steps), *p.shape)
        units = zero.reshape(len(steps), p.shape[0], -1).all(axis=2).mean()
        print(f"{name:24s} {str(tuple(p.shape)):>18s} {n:9d} {zero.mean():10.1%} {units:10.1%}")
        offset += n
    assert offset == total == len(grads[steps[0]])
    zero_share, all_share, nonzero_share, weight_share = [], [], [], []
    for k in steps:
        product = grads[k] * grads[k - 1]
        flipped = product < 0
        zero_share.append(np.mean(grads[k] == 0))
        all_share.append(flipped.mean())
        nonzero_share.append(flipped.sum() / np.sum(product != 0))
        weight_share.append(-product[flipped].sum() / np.abs(product).sum())
    for label, values in (("exact zeros in g_k", zero_share), ("opposite, among all entries", all_share),
                          ("opposite, among non-zero in both", nonzero_share),
                          ("opposite, weighted by |g_k g_(k-1)|", weight_share)):
        print(f"{label:36s} median {np.median(values):6.1%}  range {min(values):6.1%} .. {max(values):6.1%}")


if __name__ == "__main__":
    main()
