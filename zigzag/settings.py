"""Settings declared once: each is a ``Spec`` (help, type, choices, bounds, default) from which come its
command-line flag, its check and its part of the workflow config's JSON schema.

A dataclass of settings (``RunConfig``, ``AnalysisConfig``) carries one ``Spec`` per field in the field's
metadata (``setting``); a mapping setting (a run's ``sharpness``, ``schedule``) carries the ``Spec`` of
each of its keys. Adding a setting is one ``setting(...)`` line plus the code that uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from zigzag.errors import ZigzagError

TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
              "dict": "a mapping of keys to values", "steps": "none, every:N or a list of steps like 0,5,10"}
JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "dict": "object"}
STEPS_PATTERN = "^(none|every:[1-9][0-9]*|[0-9]+(,[0-9]+)*)$"  # a step selection written as text
# Bounds of what a run can be asked for, so that a typo (an extra zero, 1e20) is one line before any job
# starts instead of a run that never ends or an allocation that cannot succeed:
MAX_STEPS = 10**7  # steps (GD) or iterations (SGD) of one run: days of training even at 10 ms a step
MAX_SEED = 2**32 - 1  # numpy's legacy generators and many tools take 32-bit seeds; torch takes them all


@dataclass(frozen=True)
class Spec:
    """One setting. ``type``: str, int, float, bool, dict or steps (none, every:N or a list of steps).
    ``low``/``high``: bounds, open when ``low_open``/``high_open``. ``unset``: the default stands for "not
    given" (the check skips it; the workflow's config fills nothing in). ``fill``: the workflow's config
    gets the default filled in. ``flag``: ``zigzag`` has a flag for it (for a mapping: the key it sets).
    ``config``: a key of the workflow's config. ``keys``: the keys of a mapping setting."""

    help: str
    type: str = ""
    default: object = None
    choices: tuple = ()
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    unset: bool = False
    fill: bool = True
    flag: bool | str = True
    config: bool = True
    keys: dict = field(default_factory=dict)

    def rule(self) -> str:
        """What a valid value is, in words: "an integer >= 1", "one of gd, sgd", "a number in [0, 1)"."""
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        what = TYPE_NAMES[self.type]
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{low}, {high}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {high}"
        return what

    def check(self, key: str, value) -> None:
        """One ``ZigzagError`` line unless ``value`` is valid (the unset default always is)."""
        if self.unset and value == self.default:
            return
        if self.type == "steps":
            return  # parse_step_selection checks a step selection against the run's steps
        numeric = self.type in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {"int": numeric and isinstance(value, int), "float": numeric and math.isfinite(value),
              "str": isinstance(value, str), "bool": isinstance(value, bool), "dict": isinstance(value, dict)}
        if not ok[self.type] or (self.choices and value not in self.choices) or (numeric and not (
                (self.low is None or (value > self.low if self.low_open else value >= self.low)) and
                (self.high is None or (value < self.high if self.high_open else value <= self.high)))):
            raise ZigzagError(f"invalid {key}={value!r}: must be {self.rule()}")

    def describe(self) -> str:
        """The help, with the default where one is filled in."""
        given = not self.unset and self.default not in (None, {}, [])
        default = str(self.default).lower() if isinstance(self.default, bool) else self.default
        bounded = self.low is not None or self.high is not None
        return (self.help + (f"; {self.rule()}" if self.choices or bounded else "")
                + (f" (default {default})" if given else ""))

    def json_schema(self) -> dict:
        if self.type == "steps":
            schema = {"oneOf": [{"type": "string", "pattern": STEPS_PATTERN},
                                {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                            "maximum": MAX_STEPS - 1}}]}
        elif self.choices:
            schema = {"enum": list(self.choices)}
        else:
            schema = {"type": JSON_TYPES[self.type]}
        for bound, is_open, name in ((self.low, self.low_open, "Minimum"), (self.high, self.high_open, "Maximum")):
            if bound is not None:
                schema["exclusive" + name if is_open else name.lower()] = bound
        if self.keys:
            schema.update(additionalProperties=False, properties=keys_schema(self.keys))
        if self.fill and not self.unset:
            schema["default"] = self.default
        return {**schema, "description": self.describe()}


def _number(bound) -> str:
    """A bound in words: integers in full (4294967295, not 4.29497e+09), other numbers as %g."""
    if bound is None:
        return ""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e16 else f"{bound:g}"


# A run's processes: a workflow setting beside seeds (how the train rule launches a run, not what it computes:
# the numbers are one process's, and a run resumes on any count), so no flag of ``zigzag train``.
PROCESSES = Spec(help="processes one run is split across on one node (torchrun: the micro-batches of every step "
                      "shared out, one GPU each on CUDA; zigzag/distributed.py)", type="int", default=1, low=1,
                 flag=False)


def setting(default, help: str, **spec) -> dataclasses.Field:
    """A dataclass field declared with its ``Spec`` (the type comes from the field's annotation)."""
    metadata = {"spec": Spec(help=help, default=default, **spec)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def specs(cls) -> dict[str, Spec]:
    """Field name -> its ``Spec``, typed from the annotation (``str | list[int]``: a step selection)."""
    found = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata["spec"]
        typ = spec.type or ("steps" if "list" in f.type else f.type)
        found[f.name] = dataclasses.replace(spec, type=typ)
    return found


def keys_schema(keys: dict[str, Spec]) -> dict:
    return {name: spec.json_schema() for name, spec in keys.items() if spec.config}


def json_schema(cls, required: tuple = ()) -> dict:
    """The JSON schema of a settings dataclass as a section of the workflow's config."""
    return {"type": "object", "additionalProperties": False, "required": list(required),
            "properties": keys_schema(specs(cls))}


def add_flags(parser: argparse.ArgumentParser, cls, defaults: bool = False) -> None:
    """``--name`` for every field with a flag, its default when ``defaults`` else ``None`` where not
    given. A mapping's flag sets one of its keys."""
    for name, spec in specs(cls).items():
        if spec.flag is False:
            continue
        flag, help_ = "--" + name.replace("_", "-"), spec.describe().replace("%", "%%")
        if spec.type == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_)
        elif spec.type == "dict":
            parser.add_argument(flag, dest=name, help=spec.keys[spec.flag].describe().replace("%", "%%"))
        else:
            parser.add_argument(flag, dest=name, type=flag_type(spec), default=spec.default if defaults else None,
                                help=help_)


def flag_type(spec: Spec):
    """The flag's parser: ``int`` or ``float`` whose error states the setting's rule (argparse's own says
    only "invalid int value"), else ``str``."""
    if spec.type not in ("int", "float"):
        return str
    convert = int if spec.type == "int" else float

    def parse(text: str):
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {TYPE_NAMES[spec.type]}; must be {spec.rule()}") \
                from None
    parse.__name__ = spec.type
    return parse


def parse_step_selection(spec, total_steps: int, key: str,
                         steps_are: str = "the run's steps") -> set[int] | int | None:
    """``none`` -> None; ``every:N`` -> N (every N-th step from 0); ``"0,5,9"`` or a list of integers -> a set
    of steps (``true`` or ``1.5`` is no step: refused, never rounded).

    Steps in a list must lie in ``0..total_steps-1`` (``steps_are`` says what bounds them, in errors).
    """
    usage = f"invalid {key}={spec!r}: use none, every:N or a list of steps like 0,5,10"
    if not (spec is None or isinstance(spec, str) or
            isinstance(spec, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in spec)):
        raise ZigzagError(usage)
    if spec is None or spec == "none" or spec == []:
        return None
    if isinstance(spec, str) and spec.startswith("every:"):
        try:
            every = int(spec[len("every:"):])
        except ValueError:
            every = 0
        if every < 1:
            raise ZigzagError(f"invalid {key}={spec!r}: 'every:N' needs an integer N >= 1")
        return every
    try:
        steps = {int(s) for s in (spec.split(",") if isinstance(spec, str) else spec)}
    except ValueError:
        raise ZigzagError(usage) from None
    outside = sorted(s for s in steps if not 0 <= s < total_steps)
    if outside:
        shown = outside if len(outside) <= 5 else [*outside[:5], "..."]
        raise ZigzagError(f"invalid {key}: step(s) {shown} outside {steps_are} 0..{total_steps - 1}")
    return steps


def selected(selection: set[int] | int | None, step: int) -> bool:
    if selection is None:
        return False
    if isinstance(selection, int):
        return step % selection == 0
    return step in selection
