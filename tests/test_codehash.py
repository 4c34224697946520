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
    """The stages whose hash changes when the file ``module`` (``name`` for ``name.py``, or a path ending
    in ``.py`` under the package) is edited."""
    before = {stage: codehash.code_hash(stage) for stage in STAGES}
    with open(package / (module if module.endswith(".py") else f"{module}.py"), "a") as f:
        f.write("\n# edited\n")
    return {stage for stage in STAGES if codehash.code_hash(stage) != before[stage]}


@pytest.mark.parametrize("module, stages", [
    ("trainer", {"train"}),
    ("step", {"train"}),
    ("checkpoints", {"train"}),
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
    ("analysisconfig", {"analyze", "figures", "tables"}),  # the analysis settings' one declaration (and defaults)
    ("settings", set(STAGES)),  # the declaration machinery: every reader of a trajectory reads schedule settings
    ("scheduleconfig", set(STAGES)),  # the schedule settings' one declaration, which the store reads
])
def test_editing_a_module_reruns_the_stages_that_import_it(package, module, stages):
    assert stages_changed_by_editing(package, module) == stages


def test_every_module_is_run_by_some_stage_or_named(package):
    """No module drops out of every hash by accident: each is in a stage, is a standalone command, or is
    the workflow's plan (run by Snakemake, not by a job, with the cost estimate it orders jobs by and the sweeps
    it expands into ordinary runs before any job)."""
    modules = {module_name(package, path) for path in package.rglob("*.py")}
    covered = set().union(*(codehash.stage_modules(stage) for stage in STAGES))
    assert modules - covered == {"zigzag.filesummary", "zigzag.pipeline", "zigzag.configcheck", "zigzag.estimate",
                                 "zigzag.sweeps"}


def module_name(package, path) -> str:
    """The dotted name of the module in file ``path`` under ``package``."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.fixture
def subpackage(package):
    """A subpackage ``zigzag/sub`` of two modules that no stage imports yet; running its code would fail."""
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text('raise RuntimeError("the code hash ran sub")\n')
    (package / "sub" / "helper.py").write_text("from .deeper import VALUE\n")
    (package / "sub" / "deeper.py").write_text("from zigzag.errors import ZigzagError\n\nVALUE = ZigzagError\n")
    return package / "sub"


@pytest.mark.parametrize("statement", [
    "import zigzag.sub.helper",
    "from zigzag.sub import helper",
    "from zigzag.sub.helper import VALUE",
    "from .sub import helper",
    "from .sub.helper import VALUE",
])
def test_a_subpackage_module_is_hashed_with_the_stages_that_import_it(package, subpackage, statement):
    """Every form of import reaches a module in a subpackage, its package's ``__init__`` (which importing it
    runs) and, through a relative import, its own imports; editing any of them re-runs only that stage."""
    assert "zigzag.sub.helper" not in codehash.stage_modules("figures")
    with open(package / "figures.py", "a") as f:
        f.write(f"\n\ndef use_sub():\n    {statement}\n")
    assert {"zigzag.sub", "zigzag.sub.helper", "zigzag.sub.deeper"} <= set(codehash.stage_modules("figures"))
    for edited in ("sub/helper.py", "sub/deeper.py", "sub/__init__.py"):
        assert stages_changed_by_editing(package, edited) == {"figures"}, edited


def test_a_module_of_a_subpackage_that_no_stage_imports_is_reported(package, subpackage):
    """The check above sees a subpackage's modules, so one dropped from every hash does not go unnoticed."""
    modules = {module_name(package, path) for path in package.rglob("*.py")}
    covered = set().union(*(codehash.stage_modules(stage) for stage in STAGES))
    assert {"zigzag.sub", "zigzag.sub.helper", "zigzag.sub.deeper"} <= modules - covered


def test_a_name_that_is_no_module_is_not_hashed(package):
    """``from zigzag import __version__`` names an attribute, not a file: nothing to hash, and no error."""
    before = codehash.stage_modules("figures")
    with open(package / "figures.py", "a") as f:
        f.write("\nfrom zigzag import __version__  # noqa: E402\n")
    assert codehash.stage_modules("figures") == before
    assert codehash.module_file("zigzag.__version__") is None and codehash.module_file("numpy") is None
