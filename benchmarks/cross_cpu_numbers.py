"""Do the default-numbers test's arrays depend on the CPU? Imitate other CPUs on this one and compare.

Runs the computation of ``tests/test_default_numbers.py`` (two shortened default runs and their analyses,
one thread) once per imitated CPU, on the kernels the libraries choose (``--kernels chosen``) or on the
pinned ones the test uses (``--kernels pinned``), and prints per imitation how many of the arrays differ
from the first imitation's and by how much. An imitation restricts the instruction sets a library may use,
as a CPU without them would: ATen's kernels (``ATEN_CPU_CAPABILITY``), oneDNN's (``ONEDNN_MAX_CPU_ISA``),
MKL's (``MKL_ENABLE_INSTRUCTIONS``). Under the pinned kernels every imitation must give identical arrays.

    PYTHONPATH=. .venv/bin/python benchmarks/cross_cpu_numbers.py --kernels chosen pinned
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_default_numbers import run_default  # noqa: E402

IMITATIONS = {
    "this CPU": {},
    "no AVX2 in ATen": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN up to AVX": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "MKL up to AVX": {"MKL_ENABLE_INSTRUCTIONS": "AVX"},
}


def largest_difference(a: dict, b: dict) -> tuple[int, float, str]:
    """How many arrays differ, the largest relative difference and the array it is in."""
    differ, worst, where = 0, 0.0, "-"
    for name, x in a.items():
        y = b[name]
        both = np.isfinite(x) & np.isfinite(y)
        if x.shape != y.shape or not np.array_equal(np.isfinite(x), np.isfinite(y)):
            differ, worst, where = differ + 1, np.inf, name
            continue
        rel = np.abs(x[both] - y[both]) / np.maximum(np.abs(x[both]), 1e-12)
        if rel.size and rel.max() > 0:
            differ += 1
            if rel.max() > worst:
                worst, where = float(rel.max()), name
    return differ, worst, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", choices=("chosen", "pinned"), default=["chosen", "pinned"])
    args = parser.parse_args()
    print("| kernels | imitated CPU | arrays that differ | largest relative difference | in | seconds |")
    print("|---|---|---|---|---|---|")
    for kernels in args.kernels:
        first = None
        for label, env in IMITATIONS.items():
            saved = dict(os.environ)
            os.environ.update(env)  # the pinned kernels' variables take precedence over these
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                found = run_default(Path(tmp), pinned=kernels == "pinned")
            seconds = time.perf_counter() - t0
            os.environ.clear()
            os.environ.update(saved)
            if first is None:
                first = found
                print(f"| {kernels} | {label} | (reference, {len(found)} arrays) | | | {seconds:.0f} |", flush=True)
                continue
            differ, worst, where = largest_difference(first, found)
            print(f"| {kernels} | {label} | {differ} | {worst:.3g} | {where} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
