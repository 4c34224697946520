"""The design notes against the code: every citation names a section that exists, and the module table names
every module of the package."""

import re
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
