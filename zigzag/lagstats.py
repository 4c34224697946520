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

``LagRing`` keeps the last L + 1 gradients in a ring buffer on the training device. One step reads the ring
once: per block of ``CHUNK`` entries, while the block is in cache, one matrix-vector product on its values,
one on their absolute values (the overlap sum_i |g_k[i] g_j[i]|) and one on their signs s = sign(g), whose
sum_i s_k[i] s_j[i] is exact in float32 (at most ``CHUNK`` terms of -1, 0, 1) and gives the opposite-sign
count as (nonzero - sum_i s_k[i] s_j[i]) / 2, nonzero = #{i : g_k[i] != 0 != g_j[i]}: g_k's own sum_i s_k[i]^2
when no older gradient in the ring has an exact 0, else a fourth product on |s|. Per tensor, each is the block
partial sums added per tensor (a block that straddles a tensor boundary gets one more float32 product per
piece): the whole-vector statistics stay bit-identical.

The dot products are summed in two levels: float32 partial sums over blocks of ``CHUNK`` entries
(one matrix-vector product per block), and the partial sums added in float64. One float32 sum over
10^7 entries loses up to 1e-3 of its value (BENCHMARKS.md, "Exact dot products"); blocks of 16,384
entries keep every dot within about 1e-7 of the float64 reference at ResNet-34 size, at about the cost
of a single float32 product, with no float64 copy of the ring.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

CHUNK = 1 << 14  # entries per float32 partial dot product; the partials are summed in float64
LANE_BLOCKS = 64  # blocks from which a CPU ring runs two lanes at once (a thread's hand-over costs ~0.1 ms)
GPU_SPAN = 1 << 6  # blocks of CHUNK entries per batched product on a GPU (the span's scratch: 37 MB at L = 8)


class LagStats(NamedTuple):
    """One step's lag statistics, float64 on the CPU, each [L+1] (lag l = index; NaN where undefined)."""

    dot: torch.Tensor
    opposite: torch.Tensor
    opposite_nonzero: torch.Tensor
    opposite_weight: torch.Tensor


class _Span(NamedTuple):
    """Columns of the ring that ``LagRing._dot64`` takes in one go, and the views it takes of them."""

    columns: slice
    blocks: int | None  # blocks of CHUNK for a batched product; None for one matrix-vector product
    product: Callable  # torch.mv or torch.bmm
    values: torch.Tensor  # the ring's columns, [L+1, length]
    ring: torch.Tensor  # the same as the product's first operand
    out: list[torch.Tensor]  # the span's rows of the four partial sums, as the product's out
    scratch_values: torch.Tensor  # the scratch buffer's first ``length`` columns
    scratch: torch.Tensor  # the same as the product's first operand
    scratch_rows: list[torch.Tensor]  # each of its rows as the product's second operand


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
        self.zeros = torch.zeros(lags + 1, dtype=torch.int64)  # exact zeros in each ring row (0 until it is filled)
        # reused float32 partial sums of the blocked products, one row per block of CHUNK entries: <g_j, g_k>,
        # <|g_j|, |g_k|>, <s_j, s_k> and <|s_j|, |s_k|> for s = sign(g); the absolute values and signs of one span
        # of the ring go through a small scratch buffer
        blocks = -(-n_params // CHUNK)
        self._partials, self._abs_partials, self._sign_partials, self._nonzero_partials = (
            torch.empty(blocks, lags + 1, dtype=dtype, device=device) for _ in range(4))
        on_cpu = torch.device(device).type == "cpu"
        span = CHUNK * (1 if on_cpu else GPU_SPAN)
        lanes = 2 if on_cpu and blocks >= LANE_BLOCKS else 1
        self._scratch = [torch.empty(lags + 1, min(span, n_params), dtype=dtype, device=device) for _ in range(lanes)]
        spans = self._make_spans(span)
        self._lanes = [spans[lane::lanes] for lane in range(lanes)]  # each its own scratch buffer
        self._pool: ThreadPoolExecutor | None = None  # the second lane's thread, started at the first push on two
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
        with _one_thread(grad.device) as threads:
            sums = self._sums(grad, layers, threads)
        if reduce is not None:
            sums = sums.unflatten(reduce(sums.flatten()))
        return self._ratios(sums)

    def _sums(self, grad: torch.Tensor, layers: bool, threads: int = 1) -> LagSums:
        """Store g_k in the ring and return its partial sums against every ring row (ring order); ``threads``: the
        CPU threads the step may use (two lanes of blocks run at once on two)."""
        row = self.step % (self.lags + 1)
        self.zeros[row] = 0
        with_zeros = bool(self.zeros.any())  # an older row with an exact 0: the fourth product
        ring_dot, ring_abs, ring_signs, ring_nonzero = self._dot64(grad, with_zeros, threads)
        self.zeros[row] = grad.numel() - int(ring_signs[row])  # sum_i s_k[i]^2 = #{i : g_k[i] != 0}, exact
        # s_k s_j is -1 where the signs are opposite, 1 where they agree, 0 where either is 0
        ring_opposite = (ring_nonzero - ring_signs) / 2
        layer_dot = layer_opposite = None
        if layers:
            layer_dot = self.layers.dot(self.values, grad, self._partials).cpu()
            layer_opposite = self._layer_opposite(grad, with_zeros).cpu()
        return LagSums(ring_dot.cpu(), ring_abs.cpu(), ring_opposite.cpu(), ring_nonzero.cpu(), layer_dot,
                       layer_opposite)

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

    def _layer_opposite(self, grad: torch.Tensor, with_zeros: bool) -> torch.Tensor:
        """The opposite-sign count per tensor [n_layers, L+1] (float64), from the blocks' sign products; the entries
        non-zero in both from the fourth product ``with_zeros``, else g_k's own count per tensor."""
        signs = self.layers.dot(self.values, grad, self._sign_partials, torch.sign)
        if with_zeros:
            nonzero = self.layers.dot(self.values, grad, self._nonzero_partials, lambda x: torch.sign(x).abs_())
        else:
            row = self.step % (self.lags + 1)
            nonzero = signs[:, row:row + 1]
        return (nonzero - signs) / 2

    def _dot64(self, grad: torch.Tensor, with_zeros: bool, threads: int = 1) -> tuple[torch.Tensor, ...]:
        """Copy ``grad`` into its ring row and return ``self.values @ grad``, ``|self.values| @ |grad|``,
        ``sign(self.values) @ sign(grad)`` and, ``with_zeros``, ``|sign(self.values)| @ |sign(grad)|`` (else, no older
        row holding an exact 0, g_k's own non-zero count sum_i s_k[i]^2 for each): float32 partial sums over blocks of
        ``CHUNK`` entries, added in float64, each block read once (copied in, then its absolute values and signs go
        through a scratch buffer while it is in cache; the newest ring row there is the gradient's). On a CPU with
        ``threads`` >= 2 a large ring's blocks alternate between two lanes that run at once, the second on a thread of
        its own, each op of both on one thread: the partial sums, and so the statistics, are the same as on one
        lane."""
        if threads > 1 and len(self._lanes) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,))
            second = self._pool.submit(self._products, self._lanes[1], grad, with_zeros)
            self._products(self._lanes[0], grad, with_zeros)
            second.result()
        else:
            for lane in self._lanes:
                self._products(lane, grad, with_zeros)
        sums = (self._partials, self._abs_partials, self._sign_partials, self._nonzero_partials)
        totals = [p.double().sum(0) for p in sums[:3]]
        if with_zeros:
            return (*totals, sums[3].double().sum(0))
        # no older row has an exact 0: the entries non-zero in both are g_k's, sum_i s_k[i]^2 (its own row)
        return (*totals, totals[2][self.step % (self.lags + 1)].expand_as(totals[2]).clone())

    def _products(self, spans: list[_Span], grad: torch.Tensor, with_zeros: bool) -> None:
        """``_dot64``'s products over ``spans``, into their rows of the partial sums."""
        row = self.step % (self.lags + 1)
        for span in spans:
            piece = grad[span.columns]
            span.values[row].copy_(piece)  # g_k into the ring, block by block: then in cache
            vector = piece if span.blocks is None else piece.view(span.blocks, -1, 1)
            span.product(span.ring, vector, out=span.out[0])
            torch.abs(span.values, out=span.scratch_values)
            span.product(span.scratch, span.scratch_rows[row], out=span.out[1])
            torch.sign(span.values, out=span.scratch_values)
            span.product(span.scratch, span.scratch_rows[row], out=span.out[2])
            if with_zeros:
                span.scratch_values.abs_()
                span.product(span.scratch, span.scratch_rows[row], out=span.out[3])

    def _make_spans(self, span: int) -> list[_Span]:
        """The ring's columns in spans of ``span`` entries (whole blocks of ``CHUNK``; the tail a span of its own),
        with every view ``_dot64`` takes of them made once: a ResNet-18 has 682 blocks. A span of several blocks
        (a GPU) is one batched product (blocks, L+1, CHUNK) @ (blocks, CHUNK, 1); a block, one matrix-vector
        product, straight into its row of partial sums."""
        n, width = self.values.shape[1], self.lags + 1
        main = n - n % CHUNK
        bounds = [(start, min(start + span, main)) for start in range(0, main, span)]
        bounds += [(main, n)] if main < n else []
        spans = []
        for i, (start, stop) in enumerate(bounds):  # span i in lane i mod lanes (``__init__``), with its scratch
            values, scratch = self.values[:, start:stop], self._scratch[i % len(self._scratch)][:, :stop - start]
            first, blocks = start // CHUNK, -(-(stop - start) // CHUNK)
            rows = [p[first:first + blocks] for p in
                    (self._partials, self._abs_partials, self._sign_partials, self._nonzero_partials)]
            if blocks == 1:
                spans.append(_Span(slice(start, stop), None, torch.mv, values, values, [r[0] for r in rows],
                                   scratch, scratch, scratch.unbind(0)))
            else:
                def batched(x: torch.Tensor) -> torch.Tensor:
                    return x.view(width, blocks, CHUNK).transpose(0, 1)
                spans.append(_Span(slice(start, stop), blocks, torch.bmm, values, batched(values),
                                   [r.unsqueeze(-1) for r in rows], scratch, batched(scratch),
                                   [x.view(blocks, CHUNK, 1) for x in scratch.unbind(0)]))
        return spans

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Also takes the state of a ring that kept sign codes beside the values (they are not needed)."""
        self.values.copy_(state["values"])
        self.step = int(state["step"])
        self.zeros = self.values.shape[1] - torch.count_nonzero(self.values, dim=1).cpu()
        self.zeros[self.step:] = 0  # rows not yet filled


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

    def dot(self, values: torch.Tensor, grad: torch.Tensor, partials: torch.Tensor,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``transform(values) @ transform(grad)`` per tensor [n_layers, L+1] (float64, a new tensor) from the ring's
        block partial sums of that product, ``partials``, and one float32 product per piece of a straddling block."""
        for i, (a, b) in enumerate(self.pieces):
            ring, vector = values[:, a:b], grad[a:b]
            if transform is not None:
                ring, vector = transform(ring), transform(vector)
            torch.mv(ring, vector, out=self._piece_partials[i])
        sums = torch.zeros(len(self.bounds), values.shape[0], dtype=torch.float64, device=grad.device)
        sums.index_add_(0, self.whole_layers, partials[self.whole_blocks].double())
        return sums.index_add_(0, self.piece_layers, self._piece_partials.double())


@contextmanager
def _one_thread(device: torch.device):
    """Run a CPU push on one thread. Its operations are memory-bound or small (each block's touch 9 x 16,384 entries
    that are in cache): split over threads, every op ends in a barrier, and on a busy machine the threads wait for
    each other at each of a ResNet-18's 682 blocks (measured: 13 times slower with 2 threads, BENCHMARKS.md)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield threads
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
