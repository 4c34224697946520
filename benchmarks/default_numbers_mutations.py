"""Does the default-numbers test catch a one-line change? Apply each and run the test on a copy.

Each mutation below changes one line of the step, the lag statistics or the analysis in a copy of the
package and runs ``tests/test_default_numbers.py`` there; the test must fail for every one. Exits 1 if
one passes.

    .venv/bin/python benchmarks/default_numbers_mutations.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (what, file, line before, line after): each a plausible slip
MUTATIONS = [
    ("step: the mean over n + 1 images", "zigzag/step.py",
     "(loss / n).backward()", "(loss / (n + 1)).backward()"),
    ("lag statistics: lags counted forward in the ring", "zigzag/lagstats.py",
     "order = torch.tensor([(k - lag) % width", "order = torch.tensor([(k + lag) % width"),
    ("analysis: eq. (3) divided by h, not h - 1", "zigzag/analysis.py",
     "out[: len(windows)] = windows.sum(axis=1) / (h - 1)", "out[: len(windows)] = windows.sum(axis=1) / h"),
]
COPIED = ("zigzag", "tests", "workflow", "config.yaml", "pyproject.toml")


def main() -> int:
    missed = 0
    print("| mutation | test | seconds |")
    print("|---|---|---|")
    for what, file, before, after in MUTATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp)
            for name in COPIED:
                source = ROOT / name
                if source.is_dir():
                    shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(source, copy / name)
            text = (copy / file).read_text()
            assert text.count(before) == 1, f"{file}: {before!r} is not one line of it any more"
            (copy / file).write_text(text.replace(before, after))
            t0 = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                     "tests/test_default_numbers.py"], cwd=copy, capture_output=True, text=True,
                                    env={**os.environ, "PYTHONPATH": str(copy)})
            caught = result.returncode == 1 and " failed" in result.stdout
            missed += not caught
            print(f"| {what} | {'fails' if caught else 'PASSES: not caught'} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
