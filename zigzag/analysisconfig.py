"""The settings of one analysis (``zigzag analyze``), declared once: its flags, its checks and the
``analysis`` section of the workflow's config come from these fields (zigzag/settings.py)."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

from zigzag.errors import ZigzagError
from zigzag.scheduleconfig import WINDOW_H
from zigzag.settings import json_schema, parse_step_selection, setting, specs


@dataclass
class AnalysisConfig:
    """Window size, phase thresholds and the windows whose h x h matrices are kept."""

    h: int = setting(WINDOW_H, "window size of the mean correlation (eq. 3) and of the matrices; at most lags + 1",
                     low=2)
    windows: str = setting("auto", "steps k whose h x h matrices to keep: auto (a smooth, the deepest zigzag and "
                                    "the last window, found from mean_mu), 5,675,1490, auto,5,675, every:N or none; "
                                    "each k <= steps - h", config=False)
    smooth_above: float = setting(0.5, "mean_mu above this: smooth phase")
    zigzag_below: float = setting(-0.5, "mean_mu below this: zigzag phase")
    eos_tolerance: float = setting(0.1, "sharpness has reached 2/lr once >= (1 - this) * 2/lr", low=0, high=1,
                                   high_open=True)

    @classmethod
    def json_schema(cls) -> dict:
        """The ``analysis`` section of the workflow's config (``windows`` comes from the figures)."""
        return json_schema(cls)

    def validate(self) -> None:
        for name, spec in specs(type(self)).items():
            spec.check(name, getattr(self, name))
        if self.zigzag_below > self.smooth_above:
            raise ZigzagError(f"invalid thresholds: zigzag_below={self.zigzag_below} > "
                              f"smooth_above={self.smooth_above}")

    def window_steps(self, lags: int, total_steps: int, what: str) -> tuple[list[int], bool]:
        """The windows of a trajectory with ``lags`` and ``total_steps`` (named ``what`` in errors), and
        whether the analysis also finds windows itself (``auto``)."""
        if not 2 <= self.h <= lags + 1:
            raise ZigzagError(f"invalid h={self.h}: must be in 2..lags+1 = {lags + 1} for {what}")
        tokens = self.windows.split(",")
        listed = ",".join(t for t in tokens if t != "auto") or "none"
        windows = parse_step_selection(listed, total_steps, "windows") or set()
        if isinstance(windows, int):
            windows = set(range(0, total_steps - self.h + 1, windows))
        late = sorted(k for k in windows if k + self.h > total_steps)
        if late:
            raise ZigzagError(f"invalid windows {late}: a window at step k covers k..k+h-1, so k must be in "
                              f"0..{total_steps - self.h} (h={self.h}, {total_steps} steps)")
        return sorted(windows), "auto" in tokens

    def args(self) -> str:
        """The ``zigzag analyze`` flags that give these settings."""
        return shlex.join(token for f in dataclasses.fields(self)
                          for token in (f"--{f.name.replace('_', '-')}", str(getattr(self, f.name))))
