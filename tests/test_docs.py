"""The docs against the code: every citation of the design notes names a section that exists, the module table
names every module of the package, and the README's Python examples run."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r'docs/(design|formats)\.md[,;]?\s+(?:\(|section\s+)?"([^"]+)"')


def headings(doc: str) -> set[str]:
    return {line.lstrip("#").strip() for line in (ROOT / "docs" / doc).read_text().splitlines()
            if line.startswith("#")}


def test_every_cited_section_of_the_design_notes_exists():
    sources = [*ROOT.glob("zigzag/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("workflow/**/*.smk"),
               ROOT / "Snakefile", ROOT / "README.md", ROOT / "BENCHMARKS.md", *ROOT.glob("docs/*.md")]
    found = {"design": headings("design.md"), "formats": headings("formats.md")}
    cited, missing = 0, []
    for path in sources:
        text = " ".join(path.read_text().split())  # a citation may wrap over lines
        for doc, section in CITATION.findall(text):
            cited += 1
            if section not in found[doc]:
                missing.append(f"{path.relative_to(ROOT)}: docs/{doc}.md has no section {section!r}")
    assert cited >= 8 and not missing, "\n".join(missing)


def test_nothing_cites_a_design_file_outside_the_repository():
    for path in [*ROOT.glob("zigzag/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/*.py"),
                 ROOT / "README.md", ROOT / "BENCHMARKS.md"]:
        assert "DESIGN" + ".md" not in path.read_text(), path


def module_table_names(text: str) -> list[str]:
    """The modules named in the module column of the table under "Module layering" in ``text``."""
    section = text.split("\n## Module layering\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("|")][2:]  # past header, rule
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row[2])]


def test_the_module_table_names_every_module_of_the_package_once():
    """docs/design.md's module table and zigzag/ hold the same modules (a subpackage's as ``sub.name``)."""
    package = ROOT / "zigzag"
    modules = {".".join(path.relative_to(package).with_suffix("").parts) for path in package.rglob("*.py")}
    named = module_table_names((ROOT / "docs" / "design.md").read_text())
    assert len(named) == len(set(named)), f"named twice: {sorted({n for n in named if named.count(n) > 1})}"
    assert not modules - set(named), f"modules missing from the table: {sorted(modules - set(named))}"
    assert not set(named) - modules, f"the table names modules that do not exist: {sorted(set(named) - modules)}"


def test_every_python_example_of_the_readme_runs(tmp_path, files):
    """Each ```python block of README.md runs as written, in a folder of its own that holds the results files the
    examples read (a short trajectory and its analysis, under the default's names), so the examples cannot rot."""
    examples = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(examples) >= 3
    arguments = []
    for i, code in enumerate(examples):
        folder = tmp_path / f"example{i}"
        for source, target in ((files["traj"], "results/runs/cnn_lr0.1/trajectory.h5"),
                               (files["analysis"], "results/analysis/cnn_lr0.1.h5")):
            (folder / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, folder / target)
        arguments += [str(folder), code]
    result = subprocess.run([sys.executable, "-c", EXAMPLES, *arguments], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    failed = re.search(r"^README example (\d+) failed", result.stderr, re.M)
    assert result.returncode == 0 and not failed, (
        f"README example {failed and failed.group(1)} failed:\n"
        f"{examples[int(failed.group(1))] if failed else ''}\n{result.stderr}")


# Runs README's examples (folder, code, folder, code, ...) one after the other in one interpreter (one torch
# import for all), each as a script of its own in its folder.
EXAMPLES = """
import os, sys, traceback

for i, (folder, code) in enumerate(zip(sys.argv[1::2], sys.argv[2::2])):
    os.chdir(folder)
    try:
        exec(compile(code, f"<README example {i}>", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        sys.exit(f"README example {i} failed")
"""
