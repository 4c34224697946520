"""Networks given as an import path ``"package.module:factory"``: telling one from a built-in name, finding the
file that defines its module without importing it (the workflow makes that file an input of the training job),
and importing its factory. Modules are found on ``sys.path``: the working directory (where the workflow and
``python -m zigzag`` run) and ``PYTHONPATH``. Light: no torch, so that planning stays quick.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import re
import sys
from pathlib import Path

from zigzag.errors import ZigzagError

MODELS = ("cnn", "vgg16", "resnet18", "resnet34")  # the built-in networks (zigzag/models.py)
# The built-ins with BatchNorm whatever the run's ``batch_norm`` says (the cnn has it only with ``batch_norm``), for
# the config check, which builds nothing (tests/test_models.py checks this against the built modules).
ALWAYS_BATCH_NORM = ("vgg16", "resnet18", "resnet34")
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")  # module:attribute


def is_custom(name: str) -> bool:
    """A model given as an import path ``module:factory`` (anything with a colon) rather than a built-in name."""
    return ":" in name


def check_model_name(name: str) -> None:
    """One line unless ``name`` is a built-in model or a well-formed ``package.module:factory``."""
    if is_custom(name) and not IMPORT_PATH.match(name):
        raise ZigzagError(f"invalid model={name!r}: an import path must be package.module:factory (dotted Python "
                          f"names, one colon)")
    if not is_custom(name) and name not in MODELS:
        raise ZigzagError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}, or package.module:factory")


def builtin_has_batch_norm(name: str, batch_norm: bool) -> bool:
    """Whether built-in model ``name`` built with ``batch_norm`` has BatchNorm layers."""
    return name in ALWAYS_BATCH_NORM or batch_norm


def factory_file(name: str, search: tuple = ()) -> Path | None:
    """The file that defines the module of import path ``name``, found in ``search`` then ``sys.path`` without
    importing anything (no package's ``__init__`` runs); None where no such file is found."""
    top, *parts = name.partition(":")[0].split(".")
    spec = importlib.machinery.PathFinder.find_spec(top, [str(folder) for folder in (*search, *sys.path)])
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        return None
    path = Path(spec.origin)
    for part in parts:
        if path.name != "__init__.py":  # a plain module has no submodules
            return None
        found = [p for p in (path.parent / f"{part}.py", path.parent / part / "__init__.py") if p.is_file()]
        if not found:
            return None
        path = found[0]
    return path.resolve()


def import_factory(name: str):
    """The factory of import path ``name``, imported; one line if the module cannot be imported (with the
    import's own error) or lacks the attribute."""
    module_name, _, attribute = name.partition(":")
    try:
        found = importlib.import_module(module_name)
    except Exception as err:  # the module's own failure, whatever it is, is the line's reason
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise ZigzagError(f"model {name}: cannot import module {module_name}: {reason}") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ZigzagError(f"model {name}: module {module_name} has no attribute {attribute}")
        found = getattr(found, part)
    if not callable(found):
        raise ZigzagError(f"model {name}: {attribute} is not callable (a factory returning an nn.Module)")
    return found
