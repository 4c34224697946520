"""The code hashes that decide reruns: each stage's param changes when a package module it runs changes.

A stage's modules are its subcommand's entry modules and everything they import from the package,
found in the sources (``stage_modules``), so a new module or import is covered without editing a list.
``zigzag/trainer.py`` binds a checkpoint to the ``train`` hash; the workflow's rules carry each stage's
hash as a param (``zigzag/pipeline.py``).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).parent
# The modules each stage's subcommand imports; what they import from the package, transitively, is found in the
# sources (``stage_modules``), so a new module or import is covered without editing a list.
STAGE_ENTRIES = {
    "prepare": ("data",),
    "train": ("trainer",),
    "analyze": ("analysis", "analysisconfig", "store"),  # what `zigzag analyze` imports
    "figures": ("figures",),
    "tables": ("tables", "claims"),
}
# The command line every rule runs; its imports (one per subcommand, inside functions) are not followed.
COMMAND_LINE = ("__init__", "__main__", "cli", "errors")


def _package_imports(name: str) -> set[str]:
    """Package modules that module ``name`` imports anywhere in its source (module or function level)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "zigzag":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zigzag."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("zigzag."))
    return found


def stage_modules(stage: str) -> list[str]:
    """The package modules ``stage`` runs: the command line, its entry modules and all they import."""
    seen, todo = set(COMMAND_LINE), list(STAGE_ENTRIES[stage])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_package_imports(name))
    return sorted(seen)


def code_hash(stage: str) -> str:
    """sha256 (16 hex digits) of the sources of the package modules that ``stage`` runs."""
    digest = hashlib.sha256()
    for name in stage_modules(stage):
        digest.update(name.encode())
        digest.update((PACKAGE / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]
