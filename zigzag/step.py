"""One training step's arithmetic: the gradient over all micro-batches (paper eq. 1), the test evaluation, and
the training samples of a step.

Full-batch GD: g_k = (1/n) sum_i grad l(f(x_i), y_i) at theta_k, accumulated as the sum-reduced loss (the run's
``loss``, zigzag/losses.py) over micro-batches of the device-resident training set, each divided by n; for a model
without batch statistics this equals the one-giant-batch gradient. With BatchNorm the model runs in train mode, so
each micro-batch is normalised by its own statistics ("ghost batches" of size ``micro_batch``): g_k is then the
gradient of the mean of per-micro-batch-normalised losses, the one-batch gradient only when ``micro_batch >= n``.
Running statistics (used for the test evaluation) are updated once per micro-batch. SGD draws batches of
``batch_size`` from a permutation per epoch, seeded by (seed, epoch), dropping the last incomplete batch; a step is
one iteration. The update is the optimizer's: theta_k+1 = theta_k - eta_k g_k for plain GD.
"""

from __future__ import annotations

import math

import torch

from zigzag.distributed import BatchNormStatistics, Group
from zigzag.errors import ZigzagError
from zigzag.losses import logits, loss_sum
from zigzag.runconfig import RunConfig
from zigzag.settings import MAX_STEPS


def accumulate_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        micro_batch: int, loss: str = "cross_entropy",
                        n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the gradient of the mean ``loss`` over (x, y) to the parameters' ``.grad``.

    Sum-reduced loss per micro-batch divided by n (default len(x); for a process's part of a batch, the whole
    batch's), so every example weighs 1/n whatever the micro-batches; returns (loss sum, correct count) as tensors.
    """
    n = len(x) if n is None else n
    total, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), micro_batch):
        xb, yb = x[i:i + micro_batch], y[i:i + micro_batch]
        out = logits(model(xb))
        batch_loss = loss_sum(out, yb, loss)
        (batch_loss / n).backward()
        total += batch_loss.detach()
        correct += (out.detach().argmax(1) == yb).sum()
    return total, correct


class StepGradient:
    """The gradient of a step's batch into the flat gradient ``flat`` (the parameters' ``.grad``), returning
    (loss sum, correct count): ``accumulate_gradient`` in one process; split across the processes of ``group``
    (each its chunk of the micro-batches, ``Group.batch_share``), then one all-reduce of ``flat`` and the
    scalars, and BatchNorm's running statistics made one process's (``BatchNormStatistics``)."""

    def __init__(self, group: Group, model: torch.nn.Module, config: RunConfig):
        self.group, self.micro_batch, self.loss = group, config.micro_batch, config.loss
        self.batch_norm = BatchNormStatistics(model, group) if group.distributed else None

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.group.distributed:
            return accumulate_gradient(model, x, y, self.micro_batch, self.loss)
        start, stop = self.group.batch_share(len(x), self.micro_batch)
        self.batch_norm.before()
        loss_sum, correct = accumulate_gradient(model, x[start:stop], y[start:stop], self.micro_batch, self.loss,
                                                n=len(x))
        self.batch_norm.after(-(-len(x) // self.micro_batch), -(-stop // self.micro_batch))
        self.group.sum(flat)
        scalars = self.group.sum(torch.stack((loss_sum, correct)))
        return scalars[0], scalars[1]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch: int,
             loss_name: str = "cross_entropy") -> tuple[float, float]:
    """Mean loss ``loss_name`` and accuracy in eval mode (BatchNorm uses running statistics)."""
    model.eval()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), micro_batch):
        out = logits(model(x[i:i + micro_batch]))
        loss += loss_sum(out, y[i:i + micro_batch], loss_name)
        correct += (out.argmax(1) == y[i:i + micro_batch]).sum()
    model.train()
    return loss.item() / len(x), correct.item() / len(x)


class Batches:
    """The training samples of step k of a run: the whole set (GD), or batch k mod b of epoch k // b of a
    permutation seeded by (seed, epoch) (SGD, b = ``per_epoch`` batches of ``batch_size``); ``total_steps``
    is the run's number of steps (``steps``, or ``epochs`` x b iterations)."""

    def __init__(self, config: RunConfig, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y, self.seed, n = x, y, config.seed, len(x)
        self.batch_size, self.per_epoch, self.total_steps = None, 1, config.steps
        if config.optimizer == "sgd":
            if config.batch_size > n:
                raise ZigzagError(f"invalid batch_size={config.batch_size}: larger than the training set ({n})")
            self.batch_size, self.per_epoch = config.batch_size, n // config.batch_size
            self.total_steps = config.epochs * self.per_epoch
            if self.total_steps > MAX_STEPS:
                raise ZigzagError(f"invalid epochs={config.epochs}: {self.per_epoch} batches per epoch make "
                                  f"{self.total_steps} iterations, more than the {MAX_STEPS} a run may have; "
                                  f"lower epochs or raise batch_size")
        self._order: tuple[int, torch.Tensor] | None = None  # the current epoch's permutation

    def __call__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size is None:
            return self.x, self.y
        epoch, b = divmod(k, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.x), generator=gen).to(self.x.device))
        idx = self._order[1][b * self.batch_size:(b + 1) * self.batch_size]
        return self.x[idx], self.y[idx]


def diverged(row: dict) -> bool:
    """A non-finite loss or gradient norm ends the run (no update is taken from such a step)."""
    return not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]))
