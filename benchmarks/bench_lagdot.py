"""The lag statistics' dot products at ResNet-34 size: time and error of each way to sum them.

Compares, in one run on the same data (a ring of L + 1 rows correlated with g, as real gradients are):
one float32 matrix-vector product (the old code), the whole ring converted to float64 chunk by chunk,
and ``LagRing._dot64`` (float32 partial sums over blocks of ``CHUNK`` entries, added in float64).
Prints milliseconds per product, the ratio to the float32 product, and the largest error relative to
the float64 reference. Usage: python benchmarks/bench_lagdot.py [--params N] [--lags L] [--repeats R]
"""

import argparse
import time

import torch

from zigzag.lagstats import LagRing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=21_282_122, help="gradient entries (default: ResNet-34)")
    parser.add_argument("--lags", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    g = torch.randn(args.params)
    ring = LagRing(args.params, args.lags)
    for _ in range(args.lags):
        ring.push(0.7 * g + 0.3 * torch.randn(args.params))
    ring.push(g)
    reference = ring.values.double() @ g.double()

    def float64_chunks(chunk=1 << 18):
        out = torch.zeros(args.lags + 1, dtype=torch.float64)
        for start in range(0, args.params, chunk):
            out += ring.values[:, start:start + chunk].double() @ g[start:start + chunk].double()
        return out

    ways = {"float32 product": lambda: (ring.values @ g).double(), "float64 chunks": float64_chunks,
            "blocked (LagRing)": lambda: ring._dot64(g)}
    base = None
    for name, way in ways.items():
        way()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            result = way()
        ms = (time.perf_counter() - t0) / args.repeats * 1e3
        base = base or ms
        error = ((result - reference).abs() / reference.abs()).max().item()
        print(f"{name:18s} {ms:8.1f} ms  x{ms / base:5.2f}  max relative error {error:.1e}", flush=True)


if __name__ == "__main__":
    main()
