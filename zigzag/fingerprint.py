"""The arithmetic's fingerprint: what, besides the code and the settings, decides a run's last bits.

Full-batch GD at the edge of stability amplifies a difference in the last bit of a sum (another BLAS kernel,
another instruction set, another thread count) until two machines disagree on a verdict. A trajectory records
what decides those bits (its ``arithmetic`` attribute, docs/formats.md), so that two files that disagree say why.
"""

from __future__ import annotations

import json
import os

import torch

from zigzag import store

CPU_FLAGS = ("avx2", "avx512f", "fma", "amx_tile", "amx_bf16", "amx_int8")  # /proc/cpuinfo flags that pick kernels
# Environment variables that choose kernels or their summation order (tests/test_default_numbers.py pins them).
KERNEL_ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                      "OPENBLAS_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES", "CUBLAS_WORKSPACE_CONFIG")


def _cpu() -> dict:
    """The CPU's model name and which of ``CPU_FLAGS`` it has (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {"model": "", "flags": []}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    present = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", ""), "flags": [flag for flag in CPU_FLAGS if flag in present]}


def _build() -> list[str]:
    """torch's build, condensed: the lines of ``torch.__config__.show()`` (compiler, MKL, oneDNN, OpenMP, CPU
    capability) and of its build settings only BLAS_INFO and LAPACK_INFO."""
    lines = []
    for line in torch.__config__.show().splitlines():
        line = line.strip().removeprefix("- ")
        if line.startswith("Build settings:"):
            settings = dict(item.strip().split("=", 1) for item in line.split(":", 1)[1].split(", ") if "=" in item)
            lines += [f"{key}={settings[key]}" for key in ("BLAS_INFO", "LAPACK_INFO") if key in settings]
        elif line and not line.startswith("PyTorch built with"):
            lines.append(line)
    return lines


def arithmetic_fingerprint(device: torch.device | str = "cpu") -> dict:
    """torch's version, git commit, CUDA version and build; whether oneDNN (mkldnn) and MKL are used; the CPU's
    model and arithmetic flags; torch's intra-op threads; the deterministic-algorithms setting; the kernel
    environment variables that are set; and, on CUDA, the device's name and cuDNN version."""
    device = torch.device(device)
    found = {
        "torch": torch.__version__, "torch_git": torch.version.git_version, "cuda": torch.version.cuda,
        "build": _build(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "mkl": torch.backends.mkl.is_available(), "cpu": _cpu(), "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "environment": {key: os.environ[key] for key in KERNEL_ENVIRONMENT if key in os.environ},
    }
    if device.type == "cuda":
        found["device_name"] = torch.cuda.get_device_name(device)
        found["cudnn"] = torch.backends.cudnn.version()
    return found


def attrs(device: torch.device | str = "cpu") -> dict:
    """The trajectory attribute ``arithmetic`` (``store.ARITHMETIC``): the fingerprint as sorted JSON."""
    return {store.ARITHMETIC: json.dumps(arithmetic_fingerprint(device), sort_keys=True)}
