"""Sweeps: one base run expanded into a grid of ordinary runs (the config's ``sweeps:`` section).

``sweeps: {cnn_lr: {base: cnn_lr0.1, lr: {log: [0.003, 0.6], n: 9}, seeds: [0, 1]}}`` adds one run per point
of the grid (the product of its axes) to ``runs``: a copy of the base run's settings (sharpness included; its
raw gradient and parameter dumps, ``NOT_INHERITED``, left out) with the point's values, named
``<sweep>-<axis><value>`` per axis (``cnn_lr-lr0.0164``). Values are rounded to 3
significant digits, and the run trains on the rounded value, so a name is the value it trains with. An axis is
an explicit list, ``{log: [low, high], n}`` (n values evenly spaced in log) or ``{lin: [low, high], n}``.
``zigzag.configcheck.checked_config`` expands every sweep once, before any job, and records its runs as the
sweep's ``runs``: every later stage sees ordinary runs (each its own cached job) and which sweep they belong to.
"""

from __future__ import annotations

import itertools

import numpy as np

from zigzag.errors import ZigzagError

AXES = {  # axis -> (what it sets, the base optimizers it applies to)
    "lr": ("constant learning rate", ("gd", "sgd")),
    "width": ("channel width multiplier", ("gd", "sgd")),
    "batch_size": ("SGD batch size (an integer)", ("sgd",)),
}
NOT_INHERITED = ("raw_gradients", "raw_parameters")  # raw dumps of one run, not of every point: left at none
RANGES = ("log", "lin")  # the forms of a range: {log: [low, high], n} or {lin: [low, high], n}


def axis_schema(name: str) -> dict:
    """An axis's JSON schema: a list of values, or a range (checked further by ``axis_values``)."""
    number = {"type": "integer"} if name == "batch_size" else {"type": "number"}
    ranges = [{"type": "object", "additionalProperties": False, "required": [form, "n"],
               "properties": {form: {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                              "n": {"type": "integer"}}} for form in RANGES]
    return {"oneOf": [{"type": "array", "items": number, "minItems": 1}, *ranges],
            "description": f"{AXES[name][0]}: a list of values, {{log: [low, high], n: N}} or {{lin: [low, high], "
                           f"n: N}}"}


def round3(value: float) -> float:
    """``value`` to 3 significant digits (what a point's name shows and its run trains with)."""
    return float(f"{value:.3g}")


def axis_values(where: str, name: str, spec) -> list:
    """The values of one axis, rounded to 3 significant digits (integers for ``batch_size``)."""
    if isinstance(spec, list):
        values = [float(v) for v in spec]
    else:
        form = next(f for f in RANGES if f in spec)
        (low, high), n = spec[form], spec["n"]
        if n < 2:
            raise ZigzagError(f"{where}.{name}.n: {n} is not allowed; a range needs n >= 2 (or give a list)")
        if low >= high:
            raise ZigzagError(f"{where}.{name}.{form}: [{low}, {high}] is not allowed; low must be below high")
        if form == "log" and low <= 0:
            raise ZigzagError(f"{where}.{name}.log: [{low}, {high}] is not allowed; a log range needs bounds > 0")
        values = list(np.geomspace(low, high, n) if form == "log" else np.linspace(low, high, n))
    return [int(round(v)) if name == "batch_size" else round3(v) for v in values]


def value_text(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def expand(name: str, sweep: dict, runs: dict) -> dict[str, dict]:
    """The runs of sweep ``name``: run name -> settings (the base run's, with the point's values and the
    sweep's seeds if it gives them), in grid order."""
    where = f"sweeps.{name}"
    if sweep["base"] not in runs:
        raise ZigzagError(f"{where}.base: run {sweep['base']!r} is not defined; defined runs: {', '.join(runs)}")
    base = runs[sweep["base"]]
    axes = [axis for axis in sweep if axis in AXES]
    if not axes:
        raise ZigzagError(f"{where}: no axis; give at least one of {', '.join(AXES)}")
    optimizer = base.get("optimizer", "gd")
    for axis in axes:
        if optimizer not in AXES[axis][1]:
            raise ZigzagError(f"{where}.{axis}: not an axis of a {optimizer} base run ({sweep['base']}); "
                              f"allowed: {', '.join(a for a in AXES if optimizer in AXES[a][1])}")
    grid = [[(axis, value) for value in axis_values(where, axis, sweep[axis])] for axis in axes]
    expanded = {}
    for point in itertools.product(*grid):
        run = name + "".join(f"-{axis}{value_text(value)}" for axis, value in point)
        if run in expanded:
            raise ZigzagError(f"{where}: two points expand to run {run!r} (values equal to 3 significant digits)")
        settings = {key: value for key, value in base.items()
                    if key not in NOT_INHERITED and (key != "seeds" or "seeds" not in sweep)}
        settings.update(dict(point))
        if "seeds" in sweep:
            settings["seeds"] = list(sweep["seeds"])
        expanded[run] = settings
    return expanded


def expand_sweeps(config: dict) -> dict[str, list[str]]:
    """Add every sweep's runs to ``config["runs"]``; returns sweep -> its runs. A name that a run or another
    sweep already has is one ``ZigzagError`` line."""
    runs, owner = config["runs"], {}
    declared = dict(runs)
    for name, sweep in config.get("sweeps", {}).items():
        expanded = expand(name, sweep, declared)
        for run in expanded:
            if run in declared:
                raise ZigzagError(f"sweeps.{name}: its run {run!r} is also a run of runs; rename the sweep or the run")
            if run in owner:
                raise ZigzagError(f"sweeps.{name}: its run {run!r} is also a run of sweeps.{owner[run]}; rename one")
            owner[run] = name
        runs.update(expanded)
    return {name: [run for run, sweep in owner.items() if sweep == name] for name in config.get("sweeps", {})}
