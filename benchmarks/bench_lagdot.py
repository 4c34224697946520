"""The lag statistics' dot products at ResNet-34 size: time and error of each way to sum them.

Compares, in one run on the same data (a ring of L + 1 rows correlated with g, as real gradients are):
one float32 matrix-vector product (the old code), the whole ring converted to float64 chunk by chunk,
and ``LagRing._dot64`` (float32 partial sums over blocks of ``CHUNK`` entries, added in float64).
Prints milliseconds per product, the ratio to the float32 product, and the largest error relative to
the float64 reference. With ``--push``: the whole ``LagRing.push`` (three sign-flip counts) against the
push that counted one (dot and opposite only, the code before), on the same ring, and the ratio new/old.
With ``--per-layer``: ``LagRing.push_layers`` against ``LagRing.push`` on one ring split into the parameter tensors
of ResNet-18 (width 1, built on the meta device), the ratio, and the extra milliseconds per step.
Usage: python benchmarks/bench_lagdot.py [--params N] [--lags L] [--repeats R] [--push | --per-layer] [--threads T]
"""

import argparse
import time

import torch

from zigzag.lagstats import CHUNK, ZERO_CODE, LagRing


def push_one_count(ring: LagRing, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``LagRing.push`` as it was with one sign-flip count: the float32 blocks of <g_j, g_k> and the opposite signs
    of all entries (the ring's state advances the same way)."""
    k, width = ring.step, ring.lags + 1
    row = k % width
    ring.values[row].copy_(grad)
    code = torch.sign(grad, out=ring._sign).addcmul_(ring._sign, ring._sign, value=-ZERO_CODE).add_(ZERO_CODE)
    ring.signs[row].copy_(code)
    target = torch.neg(ring.signs[row], out=ring._target)
    n, partials = grad.numel(), ring._partials
    main = n - n % CHUNK
    for i, start in enumerate(range(0, main, CHUNK)):
        torch.mv(ring.values[:, start:start + CHUNK], grad[start:start + CHUNK], out=partials[i])
    if main < n:
        torch.mv(ring.values[:, main:], grad[main:], out=partials[-1])
    ring_dot = partials.double().sum(0)
    ring_opposite = torch.stack([torch.count_nonzero(torch.eq(ring.signs[i], target, out=ring._match))
                                 for i in range(width)])
    order = torch.tensor([(k - lag) % width for lag in range(width)])
    ring.step = k + 1
    return ring_dot[order], ring_opposite[order].double() / n


def bench_push(args) -> None:
    """Milliseconds per push, old (one count) and new (three), alternating on one ring of gradient-like vectors
    with a quarter of exact zeros (as the CNN's), and the ratio new/old."""
    torch.manual_seed(0)
    common = torch.randn(args.params)
    grads = []
    for k in range(args.lags + 2):
        g = (-1) ** k * 0.7 * common + 0.3 * torch.randn(args.params)
        grads.append(g.masked_fill_(torch.rand(args.params) < 0.25, 0.0))
    ring = LagRing(args.params, args.lags)
    for g in grads[:args.lags + 1]:
        ring.push(g)
    times = {"one count (before)": [], "three counts (LagRing.push)": []}
    for r in range(args.repeats):
        for name, way in (("one count (before)", push_one_count), ("three counts (LagRing.push)", LagRing.push)):
            t0 = time.perf_counter()
            way(ring, grads[r % len(grads)])
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}
    for name, value in ms.items():
        print(f"{name:28s} {value:8.1f} ms (median of {args.repeats})")
    old, new = ms.values()
    print(f"new / old = {new / old:.2f}", flush=True)


def gradient_like(n: int, steps: int) -> list[torch.Tensor]:
    """Alternating gradients around a common direction, with a quarter of exact zeros (as the CNN's)."""
    torch.manual_seed(0)
    common = torch.randn(n)
    grads = []
    for k in range(steps):
        g = (-1) ** k * 0.7 * common + 0.3 * torch.randn(n)
        grads.append(g.masked_fill_(torch.rand(n) < 0.25, 0.0))
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
