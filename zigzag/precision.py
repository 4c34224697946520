"""The arithmetic of a run: the ``precision`` setting (fp32, tf32, bf16) and the backend flags it sets.

- ``fp32``: IEEE float32 throughout: TF32 off for cuDNN convolutions and for matmuls.
- ``tf32``: TF32 tensor cores for cuDNN convolutions and matmuls (products of 10-bit mantissas,
  float32 accumulation); input data in channels_last memory layout.
- ``bf16``: forward and backward under bfloat16 autocast, channels_last, TF32 on for what autocast
  leaves in float32. Parameters, the flat gradient g_k, the lag statistics and the optimizer state stay
  float32 (autocast casts weights per operation; their gradients arrive in float32).

TF32 and bf16 autocast are used on CUDA only: on a CPU every mode turns TF32 off (so
``float32_matmul_precision`` is "highest" for the CPU's matmuls too) and computes in float32, so all three
give the same numbers (torch has bf16 autocast on CPUs, but it would compute in bfloat16, and slowly where
the CPU lacks bf16 units; it is not used). On a CPU every mode puts the data *and* the convolution weights
in channels_last: the same float32 arithmetic in another summation order, and oneDNN's convolutions take
a third less time in it (BENCHMARKS.md). The gradients stay in the default layout on both devices (the
flat gradient's order is the parameters' own).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """A precision mode on a device: which flags, layout and autocast the training step uses."""

    mode: str
    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def tf32(self) -> bool:
        return self.cuda and self.mode != "fp32"

    @property
    def channels_last(self) -> bool:
        return not self.cuda or self.mode != "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.cuda and self.mode == "bf16" else None

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of the step's forward and backward passes (bf16 autocast on CUDA, else nothing)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @contextlib.contextmanager
    def applied(self) -> Iterator[dict]:
        """Set the mode's TF32 flags for the block and restore the previous ones after it; yields ``flags()``."""
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = cudnn.allow_tf32, matmul.allow_tf32
        cudnn.allow_tf32 = matmul.allow_tf32 = self.tf32
        try:
            yield self.flags()
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = saved

    def flags(self) -> dict:
        """The effective backend flags now (recorded in the trajectory's ``backend_flags`` attribute)."""
        return {
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "autocast": "none" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch."),
            "channels_last": self.channels_last,
            "device": str(self.device),
        }

    def attrs(self) -> dict:
        """Trajectory attributes: the mode and the effective flags as JSON."""
        return {"precision": self.mode, "backend_flags": json.dumps(self.flags(), sort_keys=True)}
