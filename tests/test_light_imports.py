"""What Snakemake loads at every planning stays light: the package, the modules the workflow imports and
those it plans with import neither torch nor matplotlib (seconds each, at every ``snakemake`` call)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "matplotlib")
PLANNING = {"zigzag", "zigzag.figurekinds", "zigzag.pipeline", "zigzag.configcheck", "zigzag.runconfig"}


def workflow_imports() -> set[str]:
    """The package modules that the Snakefile and the rules import."""
    found = set()
    for path in [ROOT / "Snakefile", *ROOT.glob("workflow/**/*.smk")]:
        text = path.read_text()
        for base, names in re.findall(r"^\s*from (zigzag(?:\.\w+)*) import ([\w, ]+)", text, re.MULTILINE):
            found.add(base)
            found.update(f"{base}.{name.strip()}" for name in names.split(",")
                         if (ROOT / base.replace(".", "/") / f"{name.strip()}.py").is_file())
        found.update(re.findall(r"^\s*import (zigzag(?:\.\w+)*)", text, re.MULTILINE))
    return found


def test_the_workflow_imports_are_found():
    assert {"zigzag.codehash", "zigzag.configcheck", "zigzag.pipeline", "zigzag.errors"} <= workflow_imports()


@pytest.mark.parametrize("module", sorted(PLANNING | workflow_imports()))
def test_a_module_that_plans_imports_neither_torch_nor_matplotlib(module):
    """In a fresh interpreter, since this one has torch imported already."""
    check = (f"import sys, {module}; "
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.split() == [], f"importing {module} imports {result.stdout.strip()}"


def test_checking_and_planning_the_shipped_configs_imports_no_torch():
    """What common.smk runs before any job (the config check, every job's settings and the code hashes), on both
    shipped configs, in a fresh interpreter, imports no torch (matplotlib it may: titles are checked with its
    mathtext parser)."""
    check = """
import sys, yaml
from zigzag import codehash, configcheck, pipeline
for path in ("config.yaml", "presets/paper.yaml"):
    configcheck.check_unique_keys(path)
    config = configcheck.checked_config(yaml.safe_load(open(path)), "workflow/schemas/config.schema.yaml")
    for job in pipeline.all_jobs(config):
        pipeline.run_settings(config, job, "data.h5")
for stage in codehash.STAGE_ENTRIES:
    codehash.code_hash(stage)
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"], "planning imports torch"
