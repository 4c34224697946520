"""Learning-rate schedules of the paper's section 5.2: exponential warm-up + cosine decay, and GAWU.

Both schedulers are ordinary ``torch.optim.lr_scheduler.LRScheduler`` subclasses for any PyTorch
loop. A *unit* is whatever the caller counts with ``.step()``: an epoch (as in the paper) or an
iteration. Unit ``u`` (``u = 0`` right after construction, ``u = last_epoch``) uses

    lr_u = w(u) = eta0 * exp(omega * e(u))                       for u < t   (warm-up)
    lr_u = w(t) * (1 + cos(pi * (u - t) / (total - t))) / 2      for t <= u < total
    lr_u = 0                                                     for u >= total

with the warm-up exponent ``e(u)`` of the ``growth`` option:

- ``growth="paper"`` (the default), Section 5.2's rule ``eta_u = exp(omega * u) * eta_{u-1}``: a
  factor that grows with the unit, ``e(u) = u (u + 1) / 2``. With eta0 = 0.001 and omega = 0.1:
  0.245 at u = 10, 0.735 at 11, 2.44 at 12.
- ``growth="constant"``: the constant factor ``exp(omega)`` per unit, ``e(u) = u``.

Unit ``t`` (the change point) runs at the peak ``w(t)``, and one cosine period over the remaining
``total - t`` units reaches 0 at ``u = total``. Every parameter group gets the same lr; the values
are closed-form in ``u``, so resuming never drifts.

GAWU (geometry-adapted warm-up) picks ``t`` online: it is the first unit whose mean gradient
correlation (eq. 3, the window of ``h`` units ending at that unit) is negative after a positive one
was seen. Example (runs as is; tests execute it)::

    import torch
    from zigzag.schedules import GAWU

    model = torch.nn.Linear(10, 2)
    x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # the schedule sets the lr
    sched = GAWU(opt, eta0=1e-3, omega=0.1, total=50)
    for epoch in range(50):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        sched.observe(model.parameters())  # this unit's gradient, before sched.step()
        opt.step()
        sched.step()
    print("change point:", sched.change_point)
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from zigzag.errors import ZigzagError
from zigzag.scheduleconfig import GROWTHS, WINDOW_H, gawu_switches

__all__ = ["GAWU", "GROWTHS", "GradientCorrelationMonitor", "WarmupCosine"]


def _check_positive(owner: str, name: str, value: Any) -> float:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not value > 0 or not math.isfinite(value):
        raise ZigzagError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_int(owner: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    bad = isinstance(value, bool) or not isinstance(value, numbers.Integral)
    if bad or value < low or (high is not None and value >= high):
        bounds = f">= {low}" if high is None else f"in {low}..{high - 1}"
        raise ZigzagError(f"{owner}: {name} must be an integer {bounds}, got {value!r}")
    return int(value)


def _check_growth(owner: str, growth: Any) -> str:
    if growth not in GROWTHS:
        raise ZigzagError(f"{owner}: growth must be one of {', '.join(GROWTHS)}, got {growth!r}")
    return growth


def _exponent(u: int, growth: str) -> float:
    """e(u) of the module docstring: u (u + 1) / 2 (paper) or u (constant)."""
    return u * (u + 1) / 2 if growth == "paper" else float(u)


def _check_peak(owner: str, eta0: float, omega: float, growth: str, unit: int, fix: str) -> None:
    try:
        peak = eta0 * math.exp(omega * _exponent(unit, growth))
    except OverflowError:
        peak = math.inf
    if not math.isfinite(peak):
        raise ZigzagError(f"{owner}: the warm-up lr at unit {unit} ({growth} growth) overflows; {fix}")


def _lr(u: int, eta0: float, omega: float, growth: str, t: int | None, total: int) -> float:
    """The schedule of the module docstring at unit ``u``; ``t = None``: still warming up."""
    if u >= total:
        return 0.0
    if t is None or u < t:
        return eta0 * math.exp(omega * _exponent(u, growth))
    peak = eta0 * math.exp(omega * _exponent(t, growth))
    return peak * 0.5 * (1.0 + math.cos(math.pi * (u - t) / (total - t)))


class WarmupCosine(LRScheduler):
    """Exponential warm-up for ``change_point`` units, then one cosine period to 0 at ``total``.

    ``lr_u = w(u) = eta0 * exp(omega * e(u))`` for ``u < t``, ``lr_u = w(t) * (1 + cos(pi * (u - t) /
    (total - t))) / 2`` for ``t <= u < total`` and 0 from ``total`` on, with ``t = change_point`` in
    ``0..total-1`` (``t = 0``: no warm-up) and ``e(u) = u (u + 1) / 2`` (``growth="paper"``, Section
    5.2) or ``u`` (``growth="constant"``). Call ``.step()`` once per unit.
    """

    def __init__(
        self, optimizer: Optimizer, eta0: float, omega: float, change_point: int, total: int, last_epoch: int = -1,
        growth: str = "paper",
    ) -> None:
        owner = type(self).__name__
        self.eta0 = _check_positive(owner, "eta0", eta0)
        self.omega = _check_positive(owner, "omega", omega)
        self.growth = _check_growth(owner, growth)
        self.total = _check_int(owner, "total", total, 1)
        self.change_point = _check_int(owner, "change_point", change_point, 0, self.total)
        _check_peak(owner, self.eta0, self.omega, self.growth, self.change_point,
                    "use a smaller omega or change_point")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr = _lr(self.last_epoch, self.eta0, self.omega, self.growth, self.change_point, self.total)
        return [lr] * len(self.optimizer.param_groups)


def _flat_gradient(grad: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """A float64 copy of the flattened gradient: a tensor as is, or the ``.grad`` of parameters."""
    if isinstance(grad, torch.Tensor) and not isinstance(grad, torch.nn.Parameter):
        return grad.detach().reshape(-1).to(torch.float64, copy=True)
    params = [grad] if isinstance(grad, torch.Tensor) else list(grad)
    if not params:
        raise ZigzagError("GradientCorrelationMonitor: got no parameters; pass model.parameters() or a tensor")
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1) for p in params]
    return torch.cat(parts).to(torch.float64)


class GradientCorrelationMonitor:
    """Online mean gradient correlation (paper eqs. 2-3) from one gradient per unit.

    ``update(g_k)`` returns the adjacent cosine ``mu(k-1, k) = <g_{k-1}, g_k> / (|g_{k-1}| |g_k|)``
    (NaN on the first call, or when either gradient is zero). ``mean_correlation`` is the mean of the
    last ``h - 1`` adjacent cosines, ``1/(h-1) * sum_{m=1..h-1} mu(k-h+m, k-h+m+1)``: eq. (3) for the
    window of ``h`` units that ends at the current unit ``k``, i.e. ``mean_mu_{k-h+1}`` of docs/design.md;
    NaN until ``h - 1`` cosines exist. Keeps one float64 copy of the previous gradient and the last
    ``h - 1`` cosines. A parameter whose ``.grad`` is None counts as zeros.
    """

    def __init__(self, h: int = WINDOW_H) -> None:
        self.h = _check_int("GradientCorrelationMonitor", "h", h, 2)
        self._previous: torch.Tensor | None = None
        self._previous_sqnorm = math.nan
        self._cosines: deque[float] = deque(maxlen=self.h - 1)

    def update(self, grad: torch.Tensor | Iterable[torch.Tensor]) -> float:
        """Feed this unit's gradient (a tensor, or parameters whose ``.grad`` is used)."""
        current = _flat_gradient(grad)
        sqnorm = float(torch.dot(current, current))
        cosine = math.nan
        if self._previous is not None:
            previous = self._previous.to(current.device)
            if previous.numel() != current.numel():
                raise ZigzagError(
                    f"GradientCorrelationMonitor: gradient has {current.numel()} entries, the previous one "
                    f"{previous.numel()}; feed the same parameters every unit"
                )
            denominator = math.sqrt(self._previous_sqnorm * sqnorm)
            if denominator > 0:
                cosine = min(1.0, max(-1.0, float(torch.dot(previous, current)) / denominator))
            self.add_cosine(cosine)
        self._previous, self._previous_sqnorm = current, sqnorm
        return cosine

    def add_cosine(self, cosine: float) -> None:
        """Record an adjacent cosine ``mu(k-1, k)`` computed elsewhere (e.g. from the trainer's lag
        statistics) instead of feeding gradients; use one way or the other for a monitor."""
        self._cosines.append(cosine)

    @property
    def mean_correlation(self) -> float:
        """Mean of the last ``h - 1`` adjacent cosines; NaN until that many exist."""
        if len(self._cosines) < self.h - 1:
            return math.nan
        return sum(self._cosines) / len(self._cosines)

    def state_dict(self) -> dict[str, Any]:
        return {"h": self.h, "previous": self._previous, "cosines": list(self._cosines)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["h"] != self.h:
            raise ZigzagError(
                f"GradientCorrelationMonitor: saved state has h={state['h']}, this monitor h={self.h}; "
                "build the monitor with the saved h"
            )
        previous = state["previous"]
        self._previous = None if previous is None else previous.to(torch.float64)
        self._previous_sqnorm = math.nan if previous is None else float(torch.dot(self._previous, self._previous))
        self._cosines = deque(state["cosines"], maxlen=self.h - 1)


class GAWU(LRScheduler):
    """Geometry-adapted warm-up: ``WarmupCosine`` whose change point is found from the gradients.

    Per unit ``u``: feed the gradient with ``observe(...)`` (or update your own ``monitor``), then
    ``step()``. ``step()`` reads ``m_u = monitor.mean_correlation`` and sets ``change_point = u`` at
    the first unit ``u < total`` with ``m_u < 0`` after some earlier ``m_j > 0`` (NaN and exact 0
    neither arm nor trigger; negative values before any positive one do not switch;
    ``zigzag.scheduleconfig.gawu_switches``, which the analysis applies too). Unit ``u``
    already ran at the warm-up lr ``w(u)``, which is the peak of the decay, so every lr equals
    ``WarmupCosine(change_point=u, growth=growth)`` and the decay spans the remaining ``total - u`` units.
    If never detected, the warm-up continues to ``total - 1`` (``change_point`` stays None) unless
    ``max_warmup`` is given: then the decay starts at unit ``max_warmup`` at the latest.
    With epochs as units, feed e.g. the full-batch gradient, the last iteration's or an
    epoch-averaged gradient: the monitor takes what it is given.
    ``state_dict()`` holds the monitor's state (not the object) and the switch state; as with any
    torch scheduler, also restore the optimizer's state (it holds the current lr).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        eta0: float,
        omega: float,
        total: int,
        h: int = WINDOW_H,
        monitor: GradientCorrelationMonitor | None = None,
        max_warmup: int | None = None,
        growth: str = "paper",
    ) -> None:
        self.eta0 = _check_positive("GAWU", "eta0", eta0)
        self.omega = _check_positive("GAWU", "omega", omega)
        self.growth = _check_growth("GAWU", growth)
        self.total = _check_int("GAWU", "total", total, 1)
        if max_warmup is not None:
            max_warmup = _check_int("GAWU", "max_warmup", max_warmup, 0, self.total)
        self.max_warmup = max_warmup
        last = self.total - 1 if self.max_warmup is None else self.max_warmup
        _check_peak("GAWU", self.eta0, self.omega, self.growth, last, "set max_warmup or use a smaller omega")
        if monitor is None:
            monitor = GradientCorrelationMonitor(h)
        elif monitor.h != h:
            raise ZigzagError(f"GAWU: h={h} but the monitor has h={monitor.h}; pass h={monitor.h} or omit monitor")
        self.monitor = monitor
        self.change_point: int | None = None
        self._seen_positive = False
        super().__init__(optimizer)

    def observe(self, grad: torch.Tensor | Iterable[torch.Tensor]) -> float:
        """Feed this unit's gradient to the monitor; returns the adjacent cosine ``mu(u-1, u)``."""
        return self.monitor.update(grad)

    def step(self) -> None:  # type: ignore[override]
        u = self.last_epoch  # the unit that just ran (-1 during construction)
        if self.change_point is None and 0 <= u < self.total:
            switch, self._seen_positive = gawu_switches(self.monitor.mean_correlation, self._seen_positive, u,
                                                        self.max_warmup)
            if switch:
                self.change_point = u
        super().step()

    def get_lr(self) -> list[float]:
        lr = _lr(self.last_epoch, self.eta0, self.omega, self.growth, self.change_point, self.total)
        return [lr] * len(self.optimizer.param_groups)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "monitor": self.monitor.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self.monitor.load_state_dict(state.pop("monitor"))
        super().load_state_dict(state)
