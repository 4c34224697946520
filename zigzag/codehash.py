"""The code hashes that decide reruns: each stage's param changes when a package module it runs changes.

A stage's modules are its subcommand's entry modules and everything they import from the package,
found in the sources (``stage_modules``), so a new module or import is covered without editing a list.
Modules are dotted names resolved to files under the package folder (``module_file``), so a subpackage
(``zigzag/sub/x.py``, and the ``__init__.py`` of each package above it) is covered like a top-level module.
Sources are parsed, never imported. ``zigzag/checkpoints.py`` binds a checkpoint to the ``train`` hash; the
workflow's rules carry each stage's hash as a param (``zigzag/pipeline.py``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).parent
# The modules each stage's subcommand imports; what they import from the package, transitively, is found in the
# sources (``stage_modules``), so a new module or import is covered without editing a list.
STAGE_ENTRIES = {
    "prepare": ("zigzag.data",),
    "train": ("zigzag.trainer",),
    "analyze": ("zigzag.analysis", "zigzag.analysisconfig", "zigzag.store"),  # what `zigzag analyze` imports
    "figures": ("zigzag.figures",),
    "tables": ("zigzag.tables", "zigzag.claims"),
}
# The command line every rule runs; its imports (one per subcommand, inside functions) are not followed.
COMMAND_LINE = ("zigzag", "zigzag.__main__", "zigzag.cli", "zigzag.errors")


def module_file(name: str) -> Path | None:
    """The source file of package module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py`` under
    ``PACKAGE``); None for a name that is no module of the package (an attribute, another package)."""
    top, *parts = name.split(".")
    if top != PACKAGE.name:
        return None
    folder = PACKAGE.joinpath(*parts)
    candidates = [folder.with_name(f"{parts[-1]}.py")] if parts else []
    for path in [*candidates, folder / "__init__.py"]:
        if path.is_file():
            return path
    return None


def _imported_names(name: str) -> frozenset[str]:
    """Every dotted name module ``name`` may import, anywhere in its source (module or function level),
    relative imports resolved; ``from a import b`` gives both ``a`` and ``a.b`` (``b`` may be a submodule)."""
    path = module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports_in(path.read_text(), package)


@functools.lru_cache(maxsize=None)
def _imports_in(source: str, package: str) -> frozenset[str]:
    """``_imported_names`` of a module of ``package`` with this ``source``, parsed once per process: a workflow
    asks for every stage's hash, and each stage walks most of the package."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def _runs(name: str) -> set[str]:
    """The package modules that importing ``name`` runs directly: the packages above it and its imports."""
    parents = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
    return {other for other in parents | _imported_names(name) if module_file(other) is not None}


def stage_modules(stage: str) -> list[str]:
    """The package modules ``stage`` runs (dotted names): the command line, its entry modules and all they
    import."""
    seen, todo = set(COMMAND_LINE), list(STAGE_ENTRIES[stage])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_runs(name))
    return sorted(seen)


def code_hash(stage: str) -> str:
    """sha256 (16 hex digits) of the names and sources of the package modules that ``stage`` runs."""
    digest = hashlib.sha256()
    for name in stage_modules(stage):
        digest.update(name.encode())
        digest.update(module_file(name).read_bytes())
    return digest.hexdigest()[:16]
