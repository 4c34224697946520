"""The default config computes what it computed: a change of structure must not change a number.

Trains the first steps of two runs of ``config.yaml`` through the command line, as the workflow does
(``cnn_lr0.1``: full-batch GD with sharpness; ``sgd_gawu``: SGD under GAWU), analyses them with the
config's analysis settings, and compares every numeric dataset and attribute of both files with
``tests/reference/default_numbers.npz``. The reference was written by this test from the code before
the settings, readers and workflow were reorganised; regenerate it only for a change that is meant to
change the numbers, and say so in the commit:

    ZIGZAG_WRITE_REFERENCE=1 .venv/bin/pytest tests/test_default_numbers.py

The comparison is tight (rtol 1e-6, and an accuracy is a count of images), so the arithmetic must not
depend on the CPU. CPU kernels pick code paths by
instruction set (AVX2, AVX-512) and cache size, which round differently, and twelve steps of GD at the
edge of stability amplify a last-bit difference to one image of accuracy. The runs therefore use one
thread and the instruction-set-independent kernels of every library (``PINNED``): ATen's baseline
kernels, MKL's conditional-numerical-reproducibility branch COMPATIBLE, convolutions through ATen's own
im2col + MKL GEMM (oneDNN and NNPACK, which choose kernels by CPU, off), and NumPy's and OpenBLAS's
baseline kernels. For these small runs that costs 1.3 times the time of the kernels the libraries
choose; BENCHMARKS.md, "The default-numbers test on any CPU", has the measurements and how they were
made (benchmarks/cross_cpu_numbers.py, benchmarks/default_numbers_mutations.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from zigzag import configcheck, pipeline

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).parent / "reference" / "default_numbers.npz"
# The sharpness on 100 of the 250 images of its subset: the same code, at 40 % of the solves' cost (the solves were
# about two thirds of this test's time).
SHORTENED = {"cnn_lr0.1": {"steps": 12, "eval_every": 5, "sharpness": {"every": "every:5", "subset": 100}},
             "sgd_gawu": {"epochs": 2}}
# Environment of the runs: the kernels every x86-64 CPU computes alike (see the docstring).
PINNED = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OPENBLAS_CORETYPE": "Nehalem",
          "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
          "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"}
# The CLI with oneDNN and NNPACK convolutions off (no environment variable turns them off).
PINNED_CLI = """
import sys
import torch

torch.backends.mkldnn.enabled = False
torch._C._set_nnpack_enabled(False)
from zigzag.cli import main

sys.exit(main(sys.argv[1:]))
"""
# wall-clock times and identifiers differ from run to run; everything else must not
VARYING = ("time", "elapsed", "seconds", "trajectory_id", "created", "host", "versions", "config", "git",
           "trajectory", "sha256", "torch", "numpy", "python", "device", "platform")


def numbers(path) -> dict[str, np.ndarray]:
    """Every numeric dataset and attribute of an HDF5 file, keyed by path (``/steps/loss``, ``/@lags``)."""
    out = {}

    def keep(name: str, value) -> None:
        if any(word in name.rsplit("/", 1)[-1] for word in VARYING):
            return
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
            out[name] = value.astype(np.float64)

    with h5py.File(path, "r") as f:
        for key, value in f.attrs.items():
            keep(f"/@{key}", value)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                keep(f"/{name}", obj[()])
            for key, value in obj.attrs.items():
                keep(f"/{name}@{key}", value)

        f.visititems(visit)
    return out


def pinned_cli(*args, env=None, pinned=True) -> None:
    """``zigzag *args`` in a subprocess on the pinned kernels (``env`` adds to ``PINNED``), or on the kernels
    the libraries choose for this CPU (``pinned=False``, for benchmarks/cross_cpu_numbers.py)."""
    command = [sys.executable, "-c", PINNED_CLI] if pinned else [sys.executable, "-m", "zigzag"]
    result = subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(PINNED if pinned else {}), **(env or {})})
    assert result.returncode == 0, f"zigzag {args} failed:\n{result.stderr}"


def run_default(tmp_path, env=None, pinned=True) -> dict[str, np.ndarray]:
    config = configcheck.checked_config(yaml.safe_load((ROOT / "config.yaml").read_text()),
                                        ROOT / "workflow" / "schemas" / "config.schema.yaml")
    spec = config["datasets"]["mnist500"]
    dataset = tmp_path / "mnist500.h5"
    pinned_cli("prepare", *pipeline.dataset_args(config, "mnist500").split(), "--out", dataset, env=env, pinned=pinned)
    assert spec["source"] == "mnist5k"
    found = {}
    for run, changes in SHORTENED.items():
        for key, value in changes.items():
            config["runs"][run][key] = ({**config["runs"][run][key], **value} if isinstance(value, dict)
                                        else value)
        job = pipeline.run_jobs(config, run)[0]
        settings = json.loads(pipeline.run_settings(config, job, str(dataset)))
        trajectory, analysis = tmp_path / f"{job}.h5", tmp_path / f"{job}.analysis.h5"
        pinned_cli("train", "--settings", json.dumps(settings), "--threads", 1, "--quiet", "--out", trajectory,
                   env=env, pinned=pinned)
        pinned_cli("analyze", trajectory, "--out", analysis, *pipeline.analysis_args(config, job).split(), env=env,
                   pinned=pinned)
        for kind, path in (("trajectory", trajectory), ("analysis", analysis)):
            found.update({f"{run}:{kind}:{name}": value for name, value in numbers(path).items()})
    return found


def test_default_runs_compute_the_reference_numbers(tmp_path):
    found = run_default(tmp_path)
    if os.environ.get("ZIGZAG_WRITE_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        np.savez_compressed(REFERENCE, **found)
        pytest.skip(f"wrote {REFERENCE} ({len(found)} arrays)")
    reference = dict(np.load(REFERENCE))
    missing = sorted(set(reference) - set(found))
    assert not missing, f"numbers no longer written: {missing}"
    assert any(name.endswith("/steps/sharpness") for name in reference)
    for name, expected in reference.items():
        np.testing.assert_allclose(found[name], expected, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=name)
