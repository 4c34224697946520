"""What a training run prints while it trains: a progress bar on a terminal, else a line every 10 %."""

from __future__ import annotations

import math
import sys
import time


class Progress:
    """tqdm bar on a terminal; otherwise one line about every 10% of the run, with the mean gradient
    correlation over the last ``h`` steps (paper eq. 3)."""

    def __init__(self, total: int, start: int, name: str, h: int, enabled: bool = True):
        self.total, self.enabled, self.name, self.h = total, enabled, name, h
        self.every = max(1, math.ceil(total / 10))
        self.bar = None
        self.t0, self.k0 = time.perf_counter(), start
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, unit="step")

    def update(self, k: int, loss: float, mean_mu: float) -> None:
        if not self.enabled:
            return
        rate = (k + 1 - self.k0) / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", mean_mu=f"{mean_mu:+.3f}", refresh=False)
            self.bar.update(1)
        elif (k + 1) % self.every == 0 or k + 1 == self.total:
            print(f"{self.name}: step {k + 1}/{self.total} loss {loss:.4f} mean_mu(h={self.h}) "
                  f"{mean_mu:+.3f} {rate:.2f} steps/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
