"""The lag statistics' dot products at ResNet-34 size: time and error of each way to sum them.

Compares, in one run on the same data (a ring of L + 1 rows correlated with g, as real gradients are):
one float32 matrix-vector product (the old code), the whole ring converted to float64 chunk by chunk,
and ``LagRing._dot64`` (float32 partial sums over blocks of ``CHUNK`` entries, added in float64).
Prints milliseconds per product, the ratio to the float32 product, and the largest error relative to
the float64 reference. With ``--push``: the whole ``LagRing.push`` (three sign-flip counts) against the
push that counted one (dot and opposite only, the code before: ``OneCountRing``), alternating on rings of the same
gradients, and the ratio new/old.
With ``--per-layer``: ``LagRing.push_layers`` against ``LagRing.push`` on one ring split into the parameter tensors
of ResNet-18 (width 1, built on the meta device), the ratio, and the extra milliseconds per step.
Usage: python benchmarks/bench_lagdot.py [--params N] [--lags L] [--repeats R] [--push [--zeros Z] | --per-layer]
       [--threads T]
"""

import argparse
import time

import torch

from zigzag.lagstats import CHUNK, LagRing


class OneCountRing:
    """``LagRing.push`` as it was with one sign-flip count: a ring of values and one of int8 sign codes (sign(g),
    an exact 0 as 3), the float32 blocks of <g_j, g_k> and one comparison with the negated newest code per ring
    row."""

    def __init__(self, n: int, lags: int):
        self.lags, self.step = lags, 0
        self.values = torch.zeros(lags + 1, n)
        self.signs = torch.zeros(lags + 1, n, dtype=torch.int8)
        self._sign, self._target = torch.empty(n), torch.empty(n, dtype=torch.int8)
        self._match = torch.empty(n, dtype=torch.bool)
        self._partials = torch.empty(-(-n // CHUNK), lags + 1)

    def push(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, width = self.step, self.lags + 1
        row = k % width
        self.values[row].copy_(grad)
        code = torch.sign(grad, out=self._sign).addcmul_(self._sign, self._sign, value=-3).add_(3)
        self.signs[row].copy_(code)
        target = torch.neg(self.signs[row], out=self._target)
        n, partials = grad.numel(), self._partials
        main = n - n % CHUNK
        for i, start in enumerate(range(0, main, CHUNK)):
            torch.mv(self.values[:, start:start + CHUNK], grad[start:start + CHUNK], out=partials[i])
        if main < n:
            torch.mv(self.values[:, main:], grad[main:], out=partials[-1])
        ring_dot = partials.double().sum(0)
        ring_opposite = torch.stack([torch.count_nonzero(torch.eq(self.signs[i], target, out=self._match))
                                     for i in range(width)])
        order = torch.tensor([(k - lag) % width for lag in range(width)])
        self.step = k + 1
        return ring_dot[order], ring_opposite[order].double() / n


def bench_push(args) -> None:
    """Milliseconds per push, old (one count) and new (three), alternating on rings of gradient-like vectors with
    a share ``--zeros`` of exact zeros (a quarter as the CNN's; none as ResNet-18's), and the ratio new/old."""
    grads = gradient_like(args.params, args.lags + 2, args.zeros)
    rings = {"one count (before)": OneCountRing(args.params, args.lags),
             "three counts (LagRing.push)": LagRing(args.params, args.lags)}
    for g in grads[:args.lags + 1]:
        for ring in rings.values():
            ring.push(g)
    times = {name: [] for name in rings}
    for r in range(args.repeats):
        for name, ring in (rings.items() if r % 2 else reversed(rings.items())):
            t0 = time.perf_counter()
            ring.push(grads[r % len(grads)])
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}
    for name, value in ms.items():
        print(f"{name:28s} {value:8.1f} ms (median of {args.repeats})")
    old, new = ms.values()
    print(f"new / old = {new / old:.2f}", flush=True)


def gradient_like(n: int, steps: int, zeros: float = 0.25) -> list[torch.Tensor]:
    """Alternating gradients around a common direction, with a share ``zeros`` of exact zeros (a quarter as the
    CNN's)."""
    torch.manual_seed(0)
    common = torch.randn(n)
    grads = []
    for k in range(steps):
        g = (-1) ** k * 0.7 * common + 0.3 * torch.randn(n)
        grads.append(g.masked_fill_(torch.rand(n) < zeros, 0.0))
    return grads


def bench_per_layer(args) -> None:
    """Milliseconds per push with and without the per-tensor statistics, alternating on one ring split into
    ResNet-18's tensors, and the ratio per-layer / plain."""
    from zigzag.models import build_model

    with torch.device("meta"):
        model = build_model("resnet18", width=1.0, in_channels=3, num_classes=10)
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    n = sum(sizes)
    grads = gradient_like(n, args.lags + 2)
    ring = LagRing(n, args.lags, layer_sizes=sizes)
    for g in grads[:args.lags + 1]:
        ring.push(g)
    ways = {"push (whole vector)": LagRing.push, "push_layers (+ per tensor)": LagRing.push_layers}
    times = {name: [] for name in ways}
    for r in range(args.repeats):
        for name, way in (ways.items() if r % 2 else reversed(ways.items())):
            t0 = time.perf_counter()
            way(ring, grads[r % len(grads)])
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}
    print(f"ResNet-18: {n:,} parameters in {len(sizes)} tensors, {len(ring.layers.pieces)} pieces of blocks that "
          f"straddle a tensor boundary, lags {args.lags}, {torch.get_num_threads()} threads")
    for name, value in ms.items():
        print(f"{name:28s} {value:8.1f} ms (median of {args.repeats})")
    plain, layered = ms.values()
    print(f"per-layer / plain = {layered / plain:.3f}; extra {layered - plain:.1f} ms per step", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=21_282_122, help="gradient entries (default: ResNet-34)")
    parser.add_argument("--lags", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--push", action="store_true", help="time the whole push, three sign-flip counts vs one")
    parser.add_argument("--zeros", type=float, default=0.25, help="share of exact zeros in the --push gradients")
    parser.add_argument("--per-layer", action="store_true",
                        help="time push_layers against push on ResNet-18's tensors (ignores --params)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.push:
        bench_push(args)
        return
    if args.per_layer:
        bench_per_layer(args)
        return
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
            "blocked (LagRing)": lambda: ring._dot64(g, with_zeros=False)[0]}
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
