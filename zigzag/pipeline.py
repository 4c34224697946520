"""The workflow's configuration: validation, defaults and the per-rule settings that Snakemake compares.

``workflow/rules/common.smk`` calls ``checked_config`` once; every problem is one ``ZigzagError`` line
that names the key and the allowed values, raised before any job starts. The helpers below turn the
config into plain-typed rule params (dicts as sorted JSON), so that a changed setting re-runs exactly
the stages that depend on it, and ``code_hash`` gives each stage a param that changes when the
package sources it runs change.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
from pathlib import Path

import jsonschema

from zigzag.analysisconfig import AnalysisSettings
from zigzag.errors import ZigzagError

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


def _most_specific(errors: list[jsonschema.ValidationError]) -> jsonschema.ValidationError:
    """Of all errors in the config, the one a person fixes first: a misspelt key before a missing one."""
    leaves = []
    while errors:
        error = errors.pop()
        if error.context:
            errors.extend(error.context)
        elif error.validator not in ("if", "then", "allOf"):
            leaves.append(error)
    return max(leaves or errors, key=lambda e: (e.validator == "additionalProperties", len(e.absolute_path)))


def check_unique_keys(path) -> None:
    """One ``ZigzagError`` if a config file gives a key twice in one mapping (e.g. two runs of one name)."""
    from zigzag.runconfig import load_yaml

    load_yaml(path, "config file")


def load_schema(schema_path: str | Path) -> dict:
    """The config's JSON schema: the YAML file, with a ``runs`` entry's settings and the ``analysis``
    section taken from their one declaration (``RunConfig``, ``AnalysisSettings``)."""
    import yaml

    from zigzag.runconfig import RunConfig

    schema = yaml.safe_load(Path(schema_path).read_text())
    run, sections = RunConfig.json_schema(), schema["properties"]
    entry = sections["runs"]["additionalProperties"]  # holds what is not a run setting (seeds)
    entry.update(required=run["required"], properties={**run["properties"], **entry.get("properties", {})})
    sections["analysis"].update(AnalysisSettings.json_schema(), default={})
    return schema


def checked_config(config: dict, schema_path: str | Path) -> dict:
    """Validate ``config`` against the schema (filling its defaults in place) and across sections."""
    def fill_defaults(validator, properties, instance, schema):  # jsonschema's documented recipe
        for name, subschema in properties.items():
            if "default" in subschema and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)

    schema = load_schema(schema_path)
    validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"properties": fill_defaults})
    errors = list(validator(schema).iter_errors(config))
    if errors:
        raise ZigzagError(_one_line(_most_specific(errors))) from None
    _check_references(config)
    return config


def _check_references(config: dict) -> None:
    try:
        AnalysisSettings(**config["analysis"]).validate()
    except ZigzagError as err:
        raise ZigzagError(f"analysis: {err}") from None
    datasets, runs, h = config["datasets"], config["runs"], config["analysis"]["h"]
    for name, run in runs.items():
        if run["dataset"] not in datasets:
            raise ZigzagError(f"runs.{name}.dataset: {run['dataset']!r} is not defined; "
                              f"defined datasets: {', '.join(datasets)}")
        _check_run_settings(name, run)
        if h > run["lags"] + 1:
            raise ZigzagError(f"analysis.h: {h} needs lags >= {h - 1}, runs.{name}.lags is {run['lags']}; "
                              f"raise lags or lower h")
    for group, names in claim_groups(config).items():
        for name in names:
            if name not in runs:
                raise ZigzagError(f"claims.{group}: run {name!r} is not defined; defined runs: {', '.join(runs)}")
    _add_sharpness_figures(config)
    for section in ("figures", "tables"):
        for fid, spec in config[section].items():
            for where, run, step in _references(f"{section}.{fid}", spec):
                if run not in runs:
                    raise ZigzagError(f"{where}.run: {run!r} is not defined; defined runs: {', '.join(runs)}")
                steps = runs[run].get("steps")
                if isinstance(step, int) and steps is not None and step + h > steps:
                    raise ZigzagError(f"{where}: window at step {step} needs steps {step}..{step + h - 1} but "
                                      f"runs.{run}.steps is {steps}; allowed: 0..{steps - h}")


def _add_sharpness_figures(config: dict) -> None:
    """Every run that records sharpness gets a figure ``sharpness_<run>`` in all_figures."""
    for name, run in config["runs"].items():
        if run["sharpness"].get("every", "none") != "none":
            config["figures"].setdefault(f"sharpness_{name}", {
                "kind": "sharpness", "run": name,
                "title": f"Sharpness and gradient geometry: {name} (lr {run.get('lr', 'scheduled')})"})


CLAIM_SETTINGS = ("thresholds", "seeds", "overall")  # the keys of ``claims`` that are not run groups


def claim_groups(config: dict) -> dict[str, list[str]]:
    """Claim group -> the runs it reads."""
    return {group: names for group, names in config["claims"].items() if group not in CLAIM_SETTINGS}


def claim_seed_instances(config: dict, run: str) -> list[str]:
    """The jobs of ``run`` that the claims read: one per seed of ``claims.seeds``, in that order."""
    return [instance_name(config, run, seed) for seed in config["claims"]["seeds"]]


def claims_spec(config: dict, trajectory_file, analysis_file) -> str:
    """What ``zigzag table claims --spec`` takes: thresholds, seeds, the overall rule and, per claim
    group, every run's jobs (one per claims seed) with their files."""
    claims = config["claims"]
    groups = {group: [[[i, trajectory_file(i), analysis_file(i)] for i in claim_seed_instances(config, run)]
                      for run in names] for group, names in claim_groups(config).items()}
    return json.dumps({"thresholds": claims["thresholds"], "seeds": claims["seeds"], "overall": claims["overall"],
                       "groups": groups}, sort_keys=True)


def claims_instances(config: dict) -> list[str]:
    return list(dict.fromkeys(i for names in claim_groups(config).values() for run in names
                              for i in claim_seed_instances(config, run)))


def _check_run_settings(name: str, run: dict) -> None:
    """What the trainer itself checks (e.g. a change point beyond the budget), before any job starts."""
    from zigzag.runconfig import RunConfig

    try:
        RunConfig.from_dict(single_seed_settings(run, run.get("seeds", [run["seed"]])[0], "<dataset>"))
    except ZigzagError as err:
        raise ZigzagError(f"runs.{name}: {err}") from None


def _references(where: str, spec: dict):
    """(config path, run, window step, "auto" or None) for every run a figure or table reads."""
    if spec["kind"] == "trajectory":
        steps = spec.get("steps", "auto")
        for step in ["auto"] if steps == "auto" else steps:
            yield where, spec["run"], step
    elif spec["kind"] == "sign_shift":
        for i, panel in enumerate(spec["panels"]):
            yield f"{where}.panels.{i}", panel["run"], panel.get("step", "auto")
    elif spec["kind"] in ("warmup", "sharpness"):
        yield where, spec["run"], None
    else:
        for i, item in enumerate(spec.get("curves") or spec["rows"]):
            yield f"{where}.{'curves' if 'curves' in spec else 'rows'}.{i}", item["run"], None


# ---------------------------------------------------------------------------------------------
# Run instances: one training job per (run, seed).


def seeds(run: dict) -> list[int]:
    return list(run.get("seeds", [run["seed"]]))


def instance_name(config: dict, run: str, seed: int) -> str:
    """The job of ``run`` on ``seed``: the run's name for its own single seed, else ``<run>-seed<s>``."""
    spec = config["runs"][run]
    return run if "seeds" not in spec and seed == spec["seed"] else f"{run}-seed{seed}"


def instances(config: dict, run: str) -> list[str]:
    """Job names of a run (what its figures and tables read): the run's name, or ``<run>-seed<s>`` for
    each of several seeds."""
    return [instance_name(config, run, s) for s in seeds(config["runs"][run])]


def all_instances(config: dict) -> dict[str, tuple[str, int]]:
    """Every job name -> (run, seed): each run's own seeds, and the seeds of ``claims.seeds`` for the
    runs the claims read."""
    jobs = {instance_name(config, run, seed): (run, seed)
            for run in config["runs"] for seed in seeds(config["runs"][run])}
    for names in claim_groups(config).values():
        for run in names:
            jobs.update({instance_name(config, run, seed): (run, seed) for seed in config["claims"]["seeds"]})
    return jobs


def single_seed_settings(run: dict, seed: int, dataset_path: str) -> dict:
    settings = {key: value for key, value in run.items() if key != "seeds"}
    settings.update(seed=seed, dataset=dataset_path)
    if settings["schedule"].get("kind") == "constant":
        settings["schedule"] = {}
    return settings


def run_settings(config: dict, instance: str, dataset_path: str) -> str:
    """One job's training settings as sorted JSON (what ``zigzag train --settings`` takes)."""
    run, seed = all_instances(config)[instance]
    return json.dumps(single_seed_settings(config["runs"][run], seed, dataset_path), sort_keys=True)


def run_of(config: dict, instance: str) -> str:
    return all_instances(config)[instance][0]


def spec_runs(spec: dict) -> list[str]:
    return sorted({run for _, run, _ in _references("", spec)})


def spec_instances(config: dict, spec: dict) -> list[str]:
    """The jobs a figure or table reads: every seed of curve/table runs; the first seed for matrices."""
    first_only = spec["kind"] in ("trajectory", "sign_shift", "sharpness")
    return [name for run in spec_runs(spec) for name in instances(config, run)[: 1 if first_only else None]]


def run_windows(config: dict, instance: str) -> list[int | str]:
    """Every window step any figure draws from this job, "auto" first when one lets the analysis find them
    (the analysis keeps exactly these matrices)."""
    run = run_of(config, instance)
    if instance != instances(config, run)[0]:
        return []
    wanted = {step for fid, fig in config["figures"].items()
              for _, r, step in _references(fid, fig) if r == run and step is not None}
    return ["auto"] * ("auto" in wanted) + sorted(wanted - {"auto"})


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


def analysis_args(config: dict, instance: str) -> str:
    """``zigzag analyze`` flags of a job: the config's analysis settings and the windows its figures draw."""
    windows = ",".join(map(str, run_windows(config, instance))) or "none"
    return AnalysisSettings(**config["analysis"], windows=windows).args()


def uses_gpu(config: dict, instance: str) -> int:
    """1 when the job trains on CUDA (device cuda, or auto on a machine that has nvidia-smi)."""
    import shutil

    device = config["runs"][run_of(config, instance)]["device"]
    return int(device == "cuda" or (device == "auto" and shutil.which("nvidia-smi") is not None))
