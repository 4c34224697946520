"""Gradient lag statistics: pure tensor code, no I/O (docs/design.md, "Lag statistics, and why they are sufficient").

At step k, for lags l = 0..L:

    dot[k, l]      = <g_k, g_{k-l}>
    opposite[k, l] = s(k, k-l) = #{i : g_k[i] * g_{k-l}[i] < 0} / P     (an exact 0 is never opposite)

both NaN where k - l < 0. They are sufficient statistics: every mu(j, k) = dot / sqrt(dot_jj dot_kk)
(paper eq. 2) with |j - k| <= L, every h x h window matrix with h <= L + 1 and every mean_mu (eq. 3)
follow from them exactly.

``LagRing`` keeps the last L + 1 gradients (values and int8 signs) in ring buffers on the training
device; one step costs one matrix-vector product and one sign comparison against the buffer.

The dot products are summed in two levels: float32 partial sums over blocks of ``CHUNK`` entries
(one matrix-vector product per block), and the partial sums added in float64. One float32 sum over
10^7 entries loses up to 1e-3 of its value (BENCHMARKS.md, "Exact dot products"); blocks of 16,384
entries keep every dot within about 1e-7 of the float64 reference at ResNet-34 size, at about the cost
of a single float32 product, with no float64 copy of the ring.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK = 1 << 14  # entries per float32 partial dot product; the partials are summed in float64


class FlatGradients:
    """One flat gradient buffer whose slices are the ``.grad`` of every trainable parameter.

    Backward accumulates into ``p.grad`` in place, so after a backward pass ``self.flat`` *is* the
    flattened gradient (parameter order of ``model.parameters()``): no per-step concatenation.
    Zero it with ``zero_()``, never with ``optimizer.zero_grad()`` (which would detach the views).
    """

    def __init__(self, model: nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad]
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
    """Ring buffer of the last ``lags + 1`` gradients; ``push(g)`` returns the step's lag statistics."""

    def __init__(self, n_params: int, lags: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if lags < 1:
            raise ValueError("lags must be >= 1")
        self.lags = lags
        self.values = torch.zeros(lags + 1, n_params, dtype=dtype, device=device)
        # Sign codes: sign(g) with an exact 0 stored as 3, so that the negated code of the newest gradient
        # (1, -1 or -3) equals an older code exactly where the two signs are opposite and neither is 0.
        self.signs = torch.zeros(lags + 1, n_params, dtype=torch.int8, device=device)
        # reused buffers: the sign in float, the negated code, one comparison
        self._sign = torch.empty(n_params, dtype=dtype, device=device)
        self._target = torch.empty(n_params, dtype=torch.int8, device=device)
        self._match = torch.empty(n_params, dtype=torch.bool, device=device)
        # reused float32 partial sums of the blocked dot products: one row per block of CHUNK entries
        self._partials = torch.empty(-(-n_params // CHUNK), lags + 1, dtype=dtype, device=device)
        self.step = 0  # number of gradients pushed so far

    def push(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store g_k (k = number pushed before) and return ``(dot[0..L], opposite[0..L])`` in float64 on CPU."""
        k, width = self.step, self.lags + 1
        row = k % width
        self.values[row].copy_(grad)
        # code = s + 3 (1 - s^2) for s = sign(g): -1, 1, and 3 for an exact 0 (never matched by a target)
        code = torch.sign(grad, out=self._sign).addcmul_(self._sign, self._sign, value=-3).add_(3)
        self.signs[row].copy_(code)
        target = torch.neg(self.signs[row], out=self._target)
        ring_dot = self._dot64(grad)
        # Row by row into one reused buffer: no (L+1) x P temporary.
        ring_opposite = torch.stack([torch.count_nonzero(torch.eq(self.signs[i], target, out=self._match))
                                     for i in range(width)])
        # Ring row of lag l is (k - l) mod (L + 1).
        order = torch.tensor([(k - lag) % width for lag in range(width)], device=grad.device)
        dot = ring_dot[order].cpu()
        opposite = ring_opposite[order].double().cpu() / grad.numel()
        undefined = torch.arange(width) > k
        dot[undefined] = float("nan")
        opposite[undefined] = float("nan")
        self.step = k + 1
        return dot, opposite

    def _dot64(self, grad: torch.Tensor) -> torch.Tensor:
        """``self.values @ grad``: float32 partial sums over blocks of ``CHUNK`` entries, added in float64."""
        n, partials = grad.numel(), self._partials
        main = n - n % CHUNK
        if grad.is_cuda:  # one batched product (blocks, L+1, CHUNK) @ (blocks, CHUNK, 1): one kernel, not n / CHUNK
            blocks = main // CHUNK
            torch.bmm(self.values[:, :main].view(self.lags + 1, blocks, CHUNK).transpose(0, 1),
                      grad[:main].view(blocks, CHUNK, 1), out=partials[:blocks].unsqueeze(-1))
        else:  # CPU: one matrix-vector product per block, straight into its row of partial sums
            for i, start in enumerate(range(0, main, CHUNK)):
                torch.mv(self.values[:, start:start + CHUNK], grad[start:start + CHUNK], out=partials[i])
        if main < n:
            torch.mv(self.values[:, main:], grad[main:], out=partials[-1])
        return partials.double().sum(0)

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "signs": self.signs.clone(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.values.copy_(state["values"])
        self.signs.copy_(state["signs"])
        self.step = int(state["step"])
