"""Gradient lag statistics: pure tensor code, no I/O (docs/design.md, "Lag statistics, and why they are sufficient").

At step k, for lags l = 0..L, with j = k - l:

    dot[k, l]              = <g_k, g_j>
    opposite[k, l]         = s(k, j) = #{i : g_k[i] g_j[i] < 0} / P               (an exact 0 is never opposite)
    opposite_nonzero[k, l] = #{i : g_k[i] g_j[i] < 0} / #{i : g_k[i] != 0 != g_j[i]}
    opposite_weight[k, l]  = (sum_i |g_k[i] g_j[i]| - <g_k, g_j>) / (2 sum_i |g_k[i] g_j[i]|)

all NaN where k - l < 0 (and the last two where their denominator is 0). A ring given the sizes of the
parameter tensors (``layer_sizes``, in the order of the flat gradient) also gives, per tensor t, the first two
restricted to its entries (``LayerStats``): layer_dot[k, t, l] (summing over t gives dot[k, l]) and
layer_opposite[k, t, l], the opposite-sign count within t over the size of t. The first two are sufficient
statistics: every mu(j, k) = dot / sqrt(dot_jj dot_kk) (paper eq. 2) with |j - k| <= L, every h x h window
matrix with h <= L + 1 and every mean_mu (eq. 3) follow from them exactly. The last two count the same
sign flips two other ways: among the entries non-zero in both gradients, and weighted by |g_k[i] g_j[i]|
(the flipped entries' share of the overlap sum_i |g_k[i] g_j[i]|, which is what the correlation sees).

``LagRing`` keeps the last L + 1 gradients (values and int8 sign codes) in ring buffers on the training
device; one step costs one matrix-vector product, one more on the block's absolute values while the block
is in cache, and one or two sign comparisons per ring row. Per tensor, the dot products are the block
partial sums added per tensor (a block that straddles a tensor boundary gets one more float32 product per
piece), and the opposite counts are counted per tensor slice of the same comparison: the whole-vector
statistics stay bit-identical.

The dot products are summed in two levels: float32 partial sums over blocks of ``CHUNK`` entries
(one matrix-vector product per block), and the partial sums added in float64. One float32 sum over
10^7 entries loses up to 1e-3 of its value (BENCHMARKS.md, "Exact dot products"); blocks of 16,384
entries keep every dot within about 1e-7 of the float64 reference at ResNet-34 size, at about the cost
of a single float32 product, with no float64 copy of the ring.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from typing import Callable, NamedTuple

import torch
from torch import nn

CHUNK = 1 << 14  # entries per float32 partial dot product; the partials are summed in float64
GPU_SPAN = 1 << 6  # blocks of CHUNK entries per batched product on a GPU (the span's |ring| scratch: 37 MB at L = 8)
ZERO_CODE = 3  # sign code of an exact 0


class LagStats(NamedTuple):
    """One step's lag statistics, float64 on the CPU, each [L+1] (lag l = index; NaN where undefined)."""

    dot: torch.Tensor
    opposite: torch.Tensor
    opposite_nonzero: torch.Tensor
    opposite_weight: torch.Tensor


class LagSums(NamedTuple):
    """One step's partial sums against each ring row (ring order, float64 on the CPU), over the entries the ring
    holds: <g_k, g_j>, sum |g_k g_j|, the opposite-sign count, the entries non-zero in both, and per tensor
    [n_layers, L+1] the dot and the opposite count (None without layers). Sums over slices of the vector add up
    to the whole vector's."""

    dot: torch.Tensor
    overlap: torch.Tensor
    opposite: torch.Tensor
    nonzero: torch.Tensor
    layer_dot: torch.Tensor | None
    layer_opposite: torch.Tensor | None

    def flatten(self) -> torch.Tensor:
        return torch.cat([series.reshape(-1) for series in self if series is not None])

    def unflatten(self, flat: torch.Tensor) -> LagSums:
        """These sums' shapes filled from ``flat`` (what ``flatten`` gave, after a reduction)."""
        pieces, offset = [], 0
        for series in self:
            if series is None:
                pieces.append(None)
                continue
            pieces.append(flat[offset:offset + series.numel()].view_as(series))
            offset += series.numel()
        return LagSums(*pieces)


class LayerStats(NamedTuple):
    """One step's lag statistics per parameter tensor, float64 on the CPU, each [n_layers, L+1] (NaN where
    k - l < 0)."""

    dot: torch.Tensor
    opposite: torch.Tensor


class FlatGradients:
    """One flat gradient buffer whose slices are the ``.grad`` of every trainable parameter.

    Backward accumulates into ``p.grad`` in place, so after a backward pass ``self.flat`` *is* the
    flattened gradient (parameter order of ``model.parameters()``): no per-step concatenation.
    Zero it with ``zero_()``, never with ``optimizer.zero_grad()`` (which would detach the views).
    """

    def __init__(self, model: nn.Module, params: list[torch.Tensor] | None = None):
        """``params``: the parameters whose gradients to hold, in this order (default: every trainable one)."""
        self.params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
        first = self.params[0]
        self.flat = torch.zeros(sum(p.numel() for p in self.params), dtype=first.dtype, device=first.device)
        offset = 0
        for p in self.params:
            p.grad = self.flat[offset: offset + p.numel()].view_as(p)
            offset += p.numel()

    def zero_(self) -> None:
        self.flat.zero_()

    def gather(self) -> None:
        """Copy every ``p.grad`` into ``self.flat`` (a missing one as zeros) and make it a view there again:
        for a loop that sets gradients to None between steps or lets autograd replace them."""
        offset = 0
        for p in self.params:
            view = self.flat[offset: offset + p.numel()].view_as(p)
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
            p.grad = view
            offset += p.numel()

    def intact(self) -> bool:
        """True while every ``p.grad`` still lives in ``self.flat`` (autograd did not replace one)."""
        base = self.flat.data_ptr()
        end = base + self.flat.numel() * self.flat.element_size()
        return all(p.grad is not None and base <= p.grad.data_ptr() < end for p in self.params)


class LagRing:
    """Ring buffer of the last ``lags + 1`` gradients; ``push(g)`` returns the step's ``LagStats``."""

    def __init__(self, n_params: int, lags: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, layer_sizes: list[int] | None = None,
                 total: int | None = None, layer_totals: list[int] | None = None):
        """``layer_sizes``: the entries of each parameter tensor in the flat gradient's order (summing to
        ``n_params``), for ``push_layers``. A ring of one slice of a longer vector (``push``'s ``reduce``) holds
        ``n_params`` of its ``total`` entries, ``layer_sizes`` of each tensor's ``layer_totals`` (0 for a tensor
        outside the slice)."""
        if lags < 1:
            raise ValueError("lags must be >= 1")
        self.lags = lags
        self.values = torch.zeros(lags + 1, n_params, dtype=dtype, device=device)
        # Sign codes: sign(g) with an exact 0 stored as ZERO_CODE, so that the negated code of the newest gradient
        # (1, -1 or -3) equals an older code exactly where the two signs are opposite and neither is 0.
        self.signs = torch.zeros(lags + 1, n_params, dtype=torch.int8, device=device)
        self.zeros = torch.zeros(lags + 1, dtype=torch.int64)  # exact zeros in each ring row
        # reused buffers: the sign in float, the negated code, one comparison
        self._sign = torch.empty(n_params, dtype=dtype, device=device)
        self._target = torch.empty(n_params, dtype=torch.int8, device=device)
        self._match = torch.empty(n_params, dtype=torch.bool, device=device)
        # reused float32 partial sums of the blocked products (<g_j, g_k> and <|g_j|, |g_k|>): one row per block of
        # CHUNK entries; the absolute values of one span of the ring go through a small scratch buffer
        blocks = -(-n_params // CHUNK)
        self._partials = torch.empty(blocks, lags + 1, dtype=dtype, device=device)
        self._abs_partials = torch.empty(blocks, lags + 1, dtype=dtype, device=device)
        span = CHUNK * (GPU_SPAN if torch.device(device).type == "cuda" else 1)
        self._abs = torch.empty(lags + 1, min(span, n_params), dtype=dtype, device=device)
        self.layers = None if layer_sizes is None else _LayerBlocks(layer_sizes, n_params, lags, dtype, device)
        self.total = n_params if total is None else total
        if layer_sizes is not None:
            self.layer_totals = torch.tensor(layer_totals or layer_sizes, dtype=torch.float64).unsqueeze(1)
        self.step = 0  # number of gradients pushed so far

    def push(self, grad: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> LagStats:
        """Store g_k (k = number pushed before) and return its ``LagStats`` (float64 on the CPU). ``reduce``: for
        a ring of one slice of the vector, the sum across the slices of a flat float64 tensor of partial sums
        (``LagSums``), applied before the ratios are formed."""
        return self._push(grad, layers=False, reduce=reduce)[0]

    def push_layers(self, grad: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> tuple[LagStats, LayerStats]:
        """``push``, and the same step's ``LayerStats`` (a ring made with ``layer_sizes``)."""
        if self.layers is None:
            raise ValueError("push_layers needs a LagRing made with layer_sizes")
        return self._push(grad, layers=True, reduce=reduce)

    def _push(self, grad: torch.Tensor, layers: bool, reduce) -> tuple[LagStats, LayerStats | None]:
        sums = self._sums(grad, layers)
        if reduce is not None:
            sums = sums.unflatten(reduce(sums.flatten()))
        return self._ratios(sums)

    def _sums(self, grad: torch.Tensor, layers: bool) -> LagSums:
        """Store g_k in the ring and return its partial sums against every ring row (ring order)."""
        k, width = self.step, self.lags + 1
        row = k % width
        self.values[row].copy_(grad)
        # code = s + 3 (1 - s^2) for s = sign(g): -1, 1, and 3 for an exact 0 (never matched by a target)
        code = torch.sign(grad, out=self._sign).addcmul_(self._sign, self._sign, value=-ZERO_CODE).add_(ZERO_CODE)
        self.signs[row].copy_(code)
        self.zeros[row] = int(torch.count_nonzero(torch.eq(self.signs[row], ZERO_CODE, out=self._match)))
        target = torch.neg(self.signs[row], out=self._target)
        ring_dot, ring_abs = self._dot64(grad)
        # Row by row into one reused buffer: no (L+1) x P temporary.
        layer_dot = layer_opposite = None
        if layers:  # counted per tensor slice: their sum is the whole count
            layer_opposite = torch.stack([self.layers.count(torch.eq(self.signs[i], target, out=self._match))
                                          for i in range(width)]).cpu()
            ring_opposite = layer_opposite.sum(1)
            layer_dot, layer_opposite = self.layers.dot(self.values, grad, self._partials).cpu(), layer_opposite.T
        else:
            ring_opposite = torch.stack([torch.count_nonzero(torch.eq(self.signs[i], target, out=self._match))
                                         for i in range(width)]).cpu()
        ring_nonzero = grad.numel() - self.zeros[row] - self.zeros + self._both_zero(row)
        return LagSums(ring_dot.cpu(), ring_abs.cpu(), ring_opposite.double(), ring_nonzero.double(), layer_dot,
                       None if layer_opposite is None else layer_opposite.double())

    def _ratios(self, sums: LagSums) -> tuple[LagStats, LayerStats | None]:
        """The step's ``LagStats`` (and ``LayerStats`` when ``sums`` has them) from its partial sums over the
        whole vector."""
        k, width = self.step, self.lags + 1
        # Ring row of lag l is (k - l) mod (L + 1).
        order = torch.tensor([(k - lag) % width for lag in range(width)])
        dot, overlap, flipped = sums.dot[order], sums.overlap[order], sums.opposite[order]
        # sum |g_j g_k| >= <g_j, g_k>, so the share lies in [0, 1]; float32 blocks can put it 1e-7 outside
        weight = ((overlap - dot) / (2 * overlap)).clamp_(0.0, 1.0)
        weight[0] = weight[0] * 0  # g_k against itself flips nothing (0, or NaN for g_k = 0): not the rounding
        stats = LagStats(dot, flipped / self.total, flipped / sums.nonzero[order], weight)
        undefined = torch.arange(width) > k
        per_layer = None
        if sums.layer_dot is not None:
            per_layer = LayerStats(sums.layer_dot[:, order], sums.layer_opposite[:, order] / self.layer_totals)
        for series in (*stats, *(per_layer or ())):
            series[..., undefined] = float("nan")
        self.step = k + 1
        return stats, per_layer

    def _both_zero(self, row: int) -> torch.Tensor:
        """Entries that are an exact 0 in ring row ``row`` and in each ring row (0 without a pass where either has
        none)."""
        counts = torch.zeros(self.lags + 1, dtype=torch.int64)
        if self.zeros[row] == 0:
            return counts
        # the zero code where row ``row`` is 0, else 2 (a code no row holds)
        zero_target = torch.clamp(self.signs[row], min=ZERO_CODE - 1, out=self._target)
        for i in range(self.lags + 1):
            if self.zeros[i]:
                counts[i] = int(torch.count_nonzero(torch.eq(self.signs[i], zero_target, out=self._match)))
        return counts

    def _dot64(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``self.values @ grad`` and ``|self.values| @ |grad|``: float32 partial sums over blocks of ``CHUNK``
        entries, added in float64. Each span's absolute values are taken into ``self._abs`` right after its first
        product, while the span is in cache (the newest ring row there is |grad|)."""
        n, partials, abs_partials, width = grad.numel(), self._partials, self._abs_partials, self.lags + 1
        main = n - n % CHUNK
        row = self.step % width
        if grad.is_cuda:  # batched products (blocks, L+1, CHUNK) @ (blocks, CHUNK, 1): one kernel per span
            span = self._abs.shape[1]
            for start in range(0, main, span):
                stop, first = min(start + span, main), start // CHUNK
                blocks = (stop - start) // CHUNK
                out = slice(first, first + blocks)
                torch.bmm(self.values[:, start:stop].view(width, blocks, CHUNK).transpose(0, 1),
                          grad[start:stop].view(blocks, CHUNK, 1), out=partials[out].unsqueeze(-1))
                scratch = torch.abs(self.values[:, start:stop], out=self._abs[:, :stop - start])
                torch.bmm(scratch.view(width, blocks, CHUNK).transpose(0, 1),
                          scratch[row].view(blocks, CHUNK, 1), out=abs_partials[out].unsqueeze(-1))
        else:  # CPU: per block, straight into its row of partial sums, on one thread (see ``_one_thread``)
            with _one_thread():
                for i, start in enumerate(range(0, main, CHUNK)):
                    block = self.values[:, start:start + CHUNK]
                    torch.mv(block, grad[start:start + CHUNK], out=partials[i])
                    scratch = torch.abs(block, out=self._abs)
                    torch.mv(scratch, scratch[row], out=abs_partials[i])
        if main < n:
            torch.mv(self.values[:, main:], grad[main:], out=partials[-1])
            scratch = torch.abs(self.values[:, main:], out=self._abs[:, :n - main])
            torch.mv(scratch, scratch[row], out=abs_partials[-1])
        return partials.double().sum(0), abs_partials.double().sum(0)

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "signs": self.signs.clone(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.values.copy_(state["values"])
        self.signs.copy_(state["signs"])
        self.zeros = (self.signs == ZERO_CODE).sum(1).cpu()
        self.step = int(state["step"])


class _LayerBlocks:
    """Where the blocks of ``CHUNK`` entries fall among the parameter tensors: the tensor of each block that lies
    inside one, and the pieces (one per tensor) of each block that straddles a boundary."""

    def __init__(self, sizes: list[int], n_params: int, lags: int, dtype: torch.dtype, device):
        if sum(sizes) != n_params or min(sizes) < 0:
            raise ValueError(f"layer sizes sum to {sum(sizes)}, not n_params = {n_params}, or one is < 0")
        ends = torch.tensor(sizes).cumsum(0)
        self.bounds = list(zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True))
        starts = torch.arange(0, n_params, CHUNK)
        first = torch.searchsorted(ends, starts, right=True)  # tensor of each block's first and last entry
        last = torch.searchsorted(ends, torch.clamp(starts + CHUNK, max=n_params) - 1, right=True)
        whole = torch.nonzero(first == last).squeeze(1)
        self.whole_blocks, self.whole_layers = whole.to(device), first[whole].to(device)
        self.pieces, piece_layers = [], []
        for block in torch.nonzero(first != last).squeeze(1).tolist():
            start, stop = block * CHUNK, min(block * CHUNK + CHUNK, n_params)
            for layer in range(int(first[block]), int(last[block]) + 1):
                a, b = self.bounds[layer]
                self.pieces.append((max(a, start), min(b, stop)))
                piece_layers.append(layer)
        self.piece_layers = torch.tensor(piece_layers, dtype=torch.int64, device=device)
        self._piece_partials = torch.empty(len(self.pieces), lags + 1, dtype=dtype, device=device)
        self._sums = torch.empty(len(sizes), lags + 1, dtype=torch.float64, device=device)

    def count(self, match: torch.Tensor) -> torch.Tensor:
        """The true entries of ``match`` in each tensor's slice, [n_layers]."""
        return torch.stack([torch.count_nonzero(match[a:b]) for a, b in self.bounds])

    def dot(self, values: torch.Tensor, grad: torch.Tensor, partials: torch.Tensor) -> torch.Tensor:
        """``values @ grad`` per tensor [n_layers, L+1] (float64) from the ring's block partial sums ``partials``
        and one float32 product per piece of a straddling block."""
        with contextlib.nullcontext() if grad.is_cuda else _one_thread():
            for i, (a, b) in enumerate(self.pieces):
                torch.mv(values[:, a:b], grad[a:b], out=self._piece_partials[i])
        sums = self._sums.zero_()
        sums.index_add_(0, self.whole_layers, partials[self.whole_blocks].double())
        return sums.index_add_(0, self.piece_layers, self._piece_partials.double())


@contextmanager
def _one_thread():
    """Run the block loop's small operations on one CPU thread. Each block's ops touch 9 x 16,384 entries that are
    in cache: split over threads, every op ends in a barrier, and on a busy machine the threads wait for each
    other at each of a ResNet-18's 682 blocks (measured: 13 times slower with 2 threads, BENCHMARKS.md)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
