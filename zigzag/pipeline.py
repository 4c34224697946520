"""The workflow's configuration: validation, defaults and the per-rule settings that Snakemake compares.

``workflow/rules/common.smk`` calls ``checked_config`` once; every problem is one ``ZigzagError`` line
that names the key and the allowed values, raised before any job starts. The helpers below turn the
config into plain-typed rule params (dicts as sorted JSON), so that a changed setting re-runs exactly
the stages that depend on it, and ``code_hash`` gives each stage a param that changes when the
package sources it runs change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema

from zigzag.errors import ZigzagError

PACKAGE = Path(__file__).parent
# Package modules each stage runs (a change to one re-runs that stage and what follows from its output).
STAGE_MODULES = {
    "prepare": ("data.py", "store.py"),
    "train": ("trainer.py", "lagstats.py", "models.py", "runconfig.py", "store.py"),
    "analyze": ("analysis.py", "store.py"),
    "figures": ("figures.py", "store.py"),
}


def code_hash(stage: str) -> str:
    """sha256 (16 hex digits) of the sources of the package modules that ``stage`` runs."""
    digest = hashlib.sha256()
    for name in STAGE_MODULES[stage]:
        digest.update(name.encode())
        digest.update((PACKAGE / name).read_bytes())
    return digest.hexdigest()[:16]


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "config"


def _one_line(error: jsonschema.ValidationError) -> str:
    where = _path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator in ("exclusiveMinimum", "minimum", "maximum", "exclusiveMaximum"):
        op = {"exclusiveMinimum": ">", "minimum": ">=", "maximum": "<=", "exclusiveMaximum": "<"}[error.validator]
        return f"{where}: {error.instance!r} is not allowed; must be {op} {error.validator_value}"
    return f"{where}: {error.message}"


def _most_specific(config: dict, schema_path, cause: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """Of all errors in the config, the one a person fixes first: a misspelt key before a missing one."""
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config)) or [cause]
    leaves = []
    while errors:
        error = errors.pop()
        if error.context:
            errors.extend(error.context)
        elif error.validator not in ("if", "then", "allOf"):
            leaves.append(error)
    return max(leaves or [cause], key=lambda e: (e.validator == "additionalProperties", len(e.absolute_path)))


def checked_config(config: dict, schema_path: str | Path) -> dict:
    """Validate ``config`` against the schema (filling its defaults in place) and across sections."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(schema_path), set_default=True)
    except WorkflowError as err:
        cause = err.__context__  # snakemake raises its WorkflowError while handling the ValidationError
        if not isinstance(cause, jsonschema.ValidationError):
            raise ZigzagError(str(err).splitlines()[0]) from None
        raise ZigzagError(_one_line(_most_specific(config, schema_path, cause))) from None
    _check_references(config)
    return config


def _check_references(config: dict) -> None:
    datasets, runs, h = config["datasets"], config["runs"], config["analysis"]["h"]
    for name, run in runs.items():
        if run["dataset"] not in datasets:
            raise ZigzagError(f"runs.{name}.dataset: {run['dataset']!r} is not defined; "
                              f"defined datasets: {', '.join(datasets)}")
        key = "epochs" if run["optimizer"] == "sgd" else "steps"
        if key not in run:
            raise ZigzagError(f"runs.{name}: {run['optimizer']} needs {key!r}")
        if run["optimizer"] == "sgd" and "batch_size" not in run:
            raise ZigzagError(f"runs.{name}: sgd needs 'batch_size'")
        if h > run["lags"] + 1:
            raise ZigzagError(f"analysis.h: {h} needs lags >= {h - 1}, runs.{name}.lags is {run['lags']}; "
                              f"raise lags or lower h")
    for fid, figure in config["figures"].items():
        for where, run, step in _figure_windows(fid, figure):
            if run not in runs:
                raise ZigzagError(f"{where}.run: {run!r} is not defined; defined runs: {', '.join(runs)}")
            steps = runs[run].get("steps")
            if steps is not None and step + h > steps:
                raise ZigzagError(f"{where}: window at step {step} needs steps {step}..{step + h - 1} but "
                                  f"runs.{run}.steps is {steps}; allowed: 0..{steps - h}")


def _figure_windows(fid: str, figure: dict):
    """(config path, run, window step) for every matrix a figure draws."""
    if figure["kind"] == "trajectory":
        for step in figure["steps"]:
            yield f"figures.{fid}", figure["run"], step
    else:
        for i, panel in enumerate(figure["panels"]):
            yield f"figures.{fid}.panels.{i}", panel["run"], panel["step"]


def figure_runs(figure: dict) -> list[str]:
    return sorted({run for _, run, _ in _figure_windows("", figure)})


def run_windows(config: dict, run: str) -> list[int]:
    """Every window step any figure draws from ``run`` (the analysis keeps exactly these matrices)."""
    return sorted({step for fid, fig in config["figures"].items()
                   for _, r, step in _figure_windows(fid, fig) if r == run})


def dataset_args(config: dict, name: str) -> str:
    """``zigzag prepare`` arguments for dataset ``name`` (a plain string: compared by Snakemake)."""
    spec = config["datasets"][name]
    args = [f"--dataset {spec['source']}", f"--seed {spec['seed']}"]
    if spec["data_root"]:
        args.append(f"--data-root {json.dumps(spec['data_root'])}")
    if spec["download"]:
        args.append("--download")
    if spec["train_size"]:
        args.append(f"--train-size {spec['train_size']}")
    return " ".join(args)


def run_settings(config: dict, run: str, dataset_path: str) -> str:
    """The run's training settings as sorted JSON (what ``zigzag train --settings`` takes)."""
    return json.dumps({**config["runs"][run], "dataset": dataset_path}, sort_keys=True)


def analysis_args(config: dict, run: str) -> str:
    a = config["analysis"]
    windows = ",".join(map(str, run_windows(config, run))) or "none"
    return f"--h {a['h']} --windows {windows} --smooth-above {a['smooth_above']} --zigzag-below {a['zigzag_below']}"


def uses_gpu(config: dict, run: str) -> int:
    """1 when the run trains on CUDA (device cuda, or auto on a machine that has nvidia-smi)."""
    import shutil

    device = config["runs"][run]["device"]
    return int(device == "cuda" or (device == "auto" and shutil.which("nvidia-smi") is not None))
