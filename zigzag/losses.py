"""The training losses, in one place: the step, the evaluation and the sharpness all take them from here.

For logits f(x) in R^C and label y, the per-example losses are

- ``cross_entropy``: l = -log softmax(f(x))_y;
- ``mse``: l = 1/2 sum_c (f_c(x) - onehot_c(y))^2, as in the edge-of-stability studies (not
  ``F.mse_loss``'s default, which also divides by C and so scales the sharpness by 1/C).

A run's loss is the mean of l over its examples; ``loss_sum`` returns the sum over a micro-batch, which the
callers divide by the whole batch's size, so the mean is exact however the examples are split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logits(output) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, or an output object's ``.logits``."""
    return output if isinstance(output, torch.Tensor) else output.logits


def loss_sum(output: torch.Tensor, labels: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """Sum over the examples of loss ``loss`` (one of ``LOSSES``) of logits ``output`` (batch, C)."""
    if loss == "cross_entropy":
        return F.cross_entropy(output, labels, reduction="sum")
    output = output.to(torch.promote_types(output.dtype, torch.float32))  # bf16 autocast: summed in float32
    onehot = F.one_hot(labels, output.shape[1]).to(output.dtype)
    return 0.5 * (output - onehot).square().sum()
