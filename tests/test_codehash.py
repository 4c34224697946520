"""Which stages a code change re-runs: each stage's code hash covers exactly the modules it imports."""

import shutil

import pytest

from zigzag import codehash

STAGES = tuple(codehash.STAGE_ENTRIES)


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of the package that a test may edit, read by ``code_hash``."""
    copy = tmp_path / "zigzag"
    shutil.copytree(codehash.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "PACKAGE", copy)
    return copy


def stages_changed_by_editing(package, module: str) -> set[str]:
    before = {stage: codehash.code_hash(stage) for stage in STAGES}
    with open(package / f"{module}.py", "a") as f:
        f.write("\n# edited\n")
    return {stage for stage in STAGES if codehash.code_hash(stage) != before[stage]}


@pytest.mark.parametrize("module, stages", [
    ("trainer", {"train"}),
    ("lagstats", {"train"}),
    ("precision", {"train"}),
    ("rawdump", {"train"}),
    ("gpulease", {"train"}),
    ("data", {"prepare"}),
    ("analysis", {"analyze", "figures", "tables"}),  # figures and claims import its phase labels
    ("figures", {"figures"}),
    ("curves", {"figures"}),
    ("claims", {"tables"}),
    ("tables", {"tables"}),
    ("store", set(STAGES)),
    ("cli", set(STAGES)),
    ("errors", set(STAGES)),
    ("filesummary", set()),  # `zigzag inspect` is no stage of the workflow
    ("codehash", {"train"}),  # a checkpoint is bound to the train hash
    ("figurekinds", {"figures"}),  # the renderer each kind names
    ("pipeline", set()),  # the plan: Snakemake runs it, no job does; what it plans is in the rules' params
    ("configcheck", set()),
    ("runconfig", {"train"}),  # the run settings' one declaration
    ("analysisconfig", {"analyze"}),  # the analysis settings' one declaration
    ("settings", {"train", "analyze", "tables"}),  # the declaration machinery (claims declare their thresholds)
])
def test_editing_a_module_reruns_the_stages_that_import_it(package, module, stages):
    assert stages_changed_by_editing(package, module) == stages


def test_every_module_is_run_by_some_stage_or_named(package):
    """No module drops out of every hash by accident: each is in a stage, is a standalone command, or is
    the workflow's plan (run by Snakemake, not by a job)."""
    modules = {p.stem for p in package.glob("*.py")}
    covered = set().union(*(codehash.stage_modules(stage) for stage in STAGES))
    assert modules - covered == {"filesummary", "pipeline", "configcheck"}
