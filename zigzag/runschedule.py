"""A run's learning rate, step by step: its schedule and the gradient-correlation monitors that drive it.

After each step k the cosine of adjacent gradients, mu(k-1, k) = <g_k, g_k-1> / (|g_k| |g_k-1|) (paper eq. 2,
from the step's lag statistics), goes to the progress monitor (the mean correlation of eq. 3 shown while
training) and to GAWU's own monitor; at the end of each schedule unit (an epoch, or one step) the scheduler
moves on. ``schedule.kind`` constant keeps the optimizer's lr.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zigzag.runconfig import RunConfig
from zigzag.scheduleconfig import WINDOW_H
from zigzag.schedules import GAWU, GradientCorrelationMonitor, WarmupCosine


class RunSchedule:
    """The schedule of ``config`` on ``optimizer``, for a run of ``total_steps`` steps of ``batches_per_epoch``
    per epoch; ``after_step`` once per step, after the optimizer's."""

    def __init__(self, config: RunConfig, optimizer: torch.optim.Optimizer, total_steps: int, batches_per_epoch: int):
        self.batches_per_epoch = batches_per_epoch
        self.steps_per_unit = batches_per_epoch if config.schedule_setting("unit") == "epoch" else 1
        self.scheduler = self._build(config, optimizer, total_steps // self.steps_per_unit)
        self.progress = GradientCorrelationMonitor(WINDOW_H)  # the mean correlation shown while training
        self.prev_sq: float | None = None  # |g_(k-1)|^2

    def _build(self, config: RunConfig, optimizer: torch.optim.Optimizer, total: int) -> WarmupCosine | GAWU | None:
        kind, sched = config.schedule_setting("kind"), config.schedule
        if kind == "constant":
            return None
        eta0, growth = sched["eta0"] * config.lr_scale, config.schedule_setting("growth")
        if kind == "warmup_cosine":
            config.check_change_point(self.batches_per_epoch)
            return WarmupCosine(optimizer, eta0, sched["omega"], sched["change_point"], total, growth=growth)
        return GAWU(optimizer, eta0, sched["omega"], total, h=config.schedule_setting("h"),
                    max_warmup=sched.get("max_warmup"), growth=growth)

    def after_step(self, k: int, dot: np.ndarray) -> None:
        """Feed mu(k-1, k) from step k's ``dot`` (<g_k, g_k-l> by lag l) to the monitors; step the schedule at
        the end of a unit."""
        if self.prev_sq is not None:
            cosine = float(dot[1]) / math.sqrt(float(dot[0]) * self.prev_sq)
            self.progress.add_cosine(cosine)
            if isinstance(self.scheduler, GAWU):
                self.scheduler.monitor.add_cosine(cosine)
        self.prev_sq = float(dot[0])
        if self.scheduler and (k + 1) % self.steps_per_unit == 0:
            self.scheduler.step()

    def change_point(self) -> dict:
        """The schedule's change point t (GAWU: the detected one) as ``change_point_step``, the first step of
        unit t (t x steps per unit), and ``change_point_epoch``, its epoch; -1 if none."""
        t = getattr(self.scheduler, "change_point", None)
        if t is None:
            return {"change_point_step": -1, "change_point_epoch": -1}
        step = int(t) * self.steps_per_unit
        return {"change_point_step": step, "change_point_epoch": step // self.batches_per_epoch}

    def state_dict(self) -> dict:
        return {"prev_sq": self.prev_sq, "progress": self.progress.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None}

    def load_state_dict(self, state: dict) -> None:
        self.prev_sq = state["prev_sq"]
        self.progress.load_state_dict(state["progress"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
