"""Every citation of the design notes in the code and the documentation names a section that exists."""

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
