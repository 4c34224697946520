"""The workflow's configuration: validation against the schema, cross-references, and its one addition.

``workflow/rules/common.smk`` calls ``check_unique_keys`` on every config file, ``checked_config`` on the
config, then ``add_sharpness_figures``; every problem is one ``ZigzagError`` line that names the key and the allowed
values, raised before any job starts. ``zigzag/pipeline.py`` plans the jobs of the checked config. A config is data:
names and ids match one pattern (the schema's ``$defs/name``) and every planned output lies inside ``results``.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path

import jsonschema

from zigzag.analysisconfig import AnalysisConfig
from zigzag.errors import ZigzagError
from zigzag.figurekinds import KINDS, figure_schemas, kind_of
from zigzag.modelimport import factory_file, is_custom
from zigzag.pipeline import claim_groups, entry_references, planned_outputs, single_seed_settings
from zigzag.settings import PROCESSES, keys_schema
from zigzag.sweeps import AXES, axis_schema, expand_sweeps


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "config"


def _one_line(error: jsonschema.ValidationError) -> str:
    where = _path(error)
    if error.validator == "type" and isinstance(error.instance, float) and not math.isfinite(error.instance):
        return f"{where}: {error.instance!r} is not allowed; must be a finite number"
    alternatives = error.parent
    if (alternatives is not None and alternatives.validator == "oneOf" and "description" in alternatives.schema
            and alternatives.absolute_path == error.absolute_path):  # fits none of the forms: say what they are
        return f"{where}: {error.instance!r} is not allowed; {alternatives.schema['description']}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "pattern" and "propertyNames" in error.schema_path:
        return f"{where}: name {error.instance!r} is not allowed; names must match {error.validator_value}"
    if error.validator == "pattern":
        return f"{where}: {error.instance!r} is not allowed; must match {error.validator_value}"
    if error.validator == "minLength":
        return f"{where}: {error.instance!r} is not allowed; must have at least {error.validator_value} character(s)"
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
    """The config's JSON schema: the YAML file, with what has one declaration in the code added: a ``runs`` entry's
    settings (``RunConfig``), the ``analysis`` section (``AnalysisConfig``), the dataset sources (``data.SOURCES``),
    each figure kind's fields (``figurekinds.figure_schemas``), a sweep's axes (``sweeps.AXES``) and the claims'
    groups, rules and thresholds (``claims.GROUPS``, ``OVERALL_RULES``, ``THRESHOLDS``)."""
    import yaml

    from zigzag.claims import GROUPS, OVERALL_RULES, THRESHOLDS
    from zigzag.data import SOURCES
    from zigzag.runconfig import RunConfig

    schema = yaml.safe_load(Path(schema_path).read_text())
    run, sections = RunConfig.json_schema(), schema["properties"]
    entry = sections["runs"]["additionalProperties"]  # holds what is not a run setting (seeds)
    entry.update(required=run["required"], properties={**run["properties"], **entry.get("properties", {}),
                                                        "processes": PROCESSES.json_schema()})
    sections["analysis"].update(AnalysisConfig.json_schema(), default={})
    dataset = sections["datasets"]["additionalProperties"]["properties"]
    dataset["source"]["enum"] = list(SOURCES)
    sizes = ", ".join(f"{name} {source.train_images}" for name, source in SOURCES.items())
    dataset["train_size"].update(maximum=max(source.train_images for source in SOURCES.values()),
                                 description=f"stratified training subset; at most the source's training images "
                                             f"({sizes})")
    sections["figures"]["additionalProperties"]["allOf"] = figure_schemas()
    sections["sweeps"]["additionalProperties"]["properties"].update({axis: axis_schema(axis) for axis in AXES})
    claims = sections["claims"]["properties"]
    claims["overall"]["enum"] = list(OVERALL_RULES)
    claims["thresholds"]["properties"] = keys_schema(THRESHOLDS)
    claims.update({group: {"$ref": "#/$defs/run_names", "description": runs} for group, runs in GROUPS.items()})
    return schema


def _finite_number(checker, instance) -> bool:
    """JSON schema's "number", less NaN and infinity (YAML's .nan, .inf): no setting or threshold means
    anything by them, and every comparison with NaN is false, so bounds would let it through."""
    return (isinstance(instance, (int, float)) and not isinstance(instance, bool)
            and (isinstance(instance, int) or math.isfinite(instance)))


def checked_config(config: dict, schema_path: str | Path, base: str | os.PathLike = ".") -> dict:
    """Validate ``config`` against the schema (filling its defaults in place) and across sections; ``base``: the
    folder of the config file, that a dataset's ``from`` path and the files of trajectory runs are relative to
    (``recorded_run``)."""
    def fill_defaults(validator, properties, instance, schema):  # jsonschema's documented recipe
        for name, subschema in properties.items():
            if "default" in subschema and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)

    schema = load_schema(schema_path)
    types = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _finite_number)
    validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"properties": fill_defaults},
                                             type_checker=types)
    runs = config.get("runs")
    recorded = {name: run for name, run in runs.items() if isinstance(run, dict) and "trajectory" in run} \
        if isinstance(runs, dict) else {}
    for name in recorded:  # checked and read on their own: they have no training settings
        del runs[name]
    _validate(validator(schema), config)
    sweep_runs = expand_sweeps(config)
    if sweep_runs:
        _validate(validator(schema), config)  # the sweeps' runs, like any run
    for name, runs in sweep_runs.items():
        config["sweeps"][name]["runs"] = runs  # the record later stages read (pipeline.sweep_runs)
    name_pattern = schema["$defs"]["name"]["pattern"]
    for name, run in recorded.items():
        if not re.match(name_pattern, name):
            raise ZigzagError(f"runs: name {name!r} is not allowed; names must match {name_pattern}")
        config["runs"][name] = recorded_run(name, run, base)
    if not config["runs"]:
        raise ZigzagError("runs: {} should be non-empty")
    _check_kinds(config)
    _check_references(config)
    _check_datasets(config, base)
    _check_texts(config)
    _check_outputs_inside_results(config)
    return config


def _validate(validator, config: dict) -> None:
    errors = list(validator.iter_errors(config))
    if errors:
        raise ZigzagError(_one_line(_most_specific(errors))) from None


def _check_outputs_inside_results(config: dict) -> None:
    """``results`` is a folder other than a filesystem root, Snakemake reads no wildcard in it, and every file
    the workflow writes (with the sharpness figures it adds) lies inside it, compared as normalised paths."""
    results = config["results"]
    root = Path(os.path.abspath(results))
    if root.parent == root:
        raise ZigzagError(f"results: {results!r} is not allowed; must be a folder other than {root}")
    if "{" in results or "}" in results:
        raise ZigzagError(f"results: {results!r} is not allowed; must not contain {{ or }} (Snakemake wildcards)")
    for path in planned_outputs(add_sharpness_figures(copy.deepcopy(config))):
        target = Path(os.path.abspath(path))
        if target == root or not target.is_relative_to(root):
            raise ZigzagError(f"results: {path!r} would lie outside {results!r}; rename the entry that names it")


def _check_kinds(config: dict) -> None:
    """Every figure's kind is one of ``figurekinds.KINDS`` (the schema declares each kind's fields)."""
    for fid, spec in config["figures"].items():
        if spec["kind"] not in KINDS:
            raise ZigzagError(f"figures.{fid}.kind: {spec['kind']!r} is not allowed; allowed: {', '.join(KINDS)}")


def _check_datasets(config: dict, config_dir: str | os.PathLike) -> None:
    """A training subset no larger than its source's training split (known without reading it); a ``from`` path
    that exists, resolved against ``config_dir`` in place, and no torchvision setting beside it."""
    from zigzag.data import SOURCES

    for name, dataset in config["datasets"].items():
        if "from" in dataset:
            path = os.path.normpath(os.path.join(config_dir, dataset["from"]))
            if not os.path.exists(path):
                raise ZigzagError(f"datasets.{name}.from: {dataset['from']!r} not found (looked for {path}, "
                                  f"relative to the config file's folder)")
            if dataset["data_root"] or dataset["download"]:
                raise ZigzagError(f"datasets.{name}: data_root and download are for the built-in sources, not from")
            dataset["from"] = path
            continue
        size, available = dataset["train_size"], SOURCES[dataset["source"]].train_images
        if size is not None and size > available:
            raise ZigzagError(f"datasets.{name}.train_size: {size} is not allowed; {dataset['source']} has "
                              f"{available} training images")


def _check_texts(config: dict) -> None:
    """Figure titles and labels that matplotlib can draw (their math text parses): refused before any job."""
    from zigzag.figures import check_text

    for fid, spec in config["figures"].items():
        texts = [("title", spec["title"])] + [(f"{part}.{i}.label", item["label"]) for part in ("curves", "panels")
                                             for i, item in enumerate(spec.get(part, []))]
        for where, text in texts:
            if "$" in text:  # only then can it be math text (and matplotlib is imported)
                try:
                    check_text(text, "text")
                except ZigzagError as err:
                    raise ZigzagError(f"figures.{fid}.{where}: {err}") from None


def recorded_run(name: str, run: dict, base: str | os.PathLike) -> dict:
    """A trajectory run (``runs.<name>: {trajectory: FILE or [FILE, ...]}``) as what its files recorded: the files
    (relative to ``base``), one seed each, and the settings the config checks read (``lags``, ``steps``, and
    ``sharpness``, ``per_layer``, ``raw_parameters`` where every file has what they record). One line for a
    missing file, a file that is not a finished zigzag trajectory, and a run with training settings."""
    from zigzag import store

    extra = sorted(set(run) - {"trajectory"})
    if extra:
        raise ZigzagError(f"runs.{name}: a trajectory run is not trained, so it takes no training settings; remove "
                          f"{', '.join(extra)}")
    listed = isinstance(run["trajectory"], list)
    files = run["trajectory"] if listed else [run["trajectory"]]
    if not files or not all(isinstance(file, str) and file for file in files) or len(set(files)) < len(files):
        raise ZigzagError(f"runs.{name}.trajectory: {run['trajectory']!r} is not allowed; must be a file or a list "
                          f"of distinct files, one per seed")
    paths, seeds, lags, steps, has = [], [], [], [], []
    for i, file in enumerate(files):
        where, path = f"runs.{name}.trajectory" + f".{i}" * listed, os.path.normpath(os.path.join(base, file))
        try:
            with store.open_file(path, store.TRAJECTORY) as f:
                attrs, recorded = dict(f.attrs), store.file_config(f)
                has.append({"sharpness": "sharpness" in f["steps"], "per_layer": "layer_names" in f.attrs,
                            "raw_parameters": "raw/parameters" in f})
        except ZigzagError as err:
            raise ZigzagError(f"{where}: {err}") from None
        if "total_steps" not in attrs:
            raise ZigzagError(f"{where}: {path} is unfinished (status {store.attr_value(attrs['status'])}); finish "
                              f"its recorder first (Recorder.finish, or leave its with-block)")
        seed = recorded.get("seed", i if listed else 0)
        if seed in seeds:
            raise ZigzagError(f"{where}: {path} records seed {seed}, as does another file of runs.{name}; give "
                              f"each file of a run its own seed")
        paths.append(path)
        seeds.append(seed)
        lags.append(int(attrs["lags"]))
        steps.append(int(attrs["total_steps"]))
    everywhere = {key: all(found[key] for found in has) for key in has[0]}
    return {"trajectory": paths, "seed": seeds[0], **({"seeds": seeds} if listed else {}), "lags": min(lags),
            "steps": min(steps), "sharpness": {"every": "recorded"} if everywhere["sharpness"] else {},
            "per_layer": everywhere["per_layer"], "raw_parameters": "recorded" if everywhere["raw_parameters"]
            else "none", **({"lr": recorded["lr"]} if "lr" in recorded else {})}


def _check_references(config: dict) -> None:
    try:
        AnalysisConfig(**config["analysis"]).validate()
    except ZigzagError as err:
        raise ZigzagError(f"analysis: {err}") from None
    datasets, runs, h = config["datasets"], config["runs"], config["analysis"]["h"]
    for name, run in runs.items():
        if "trajectory" in run:
            if h > run["lags"] + 1:
                raise ZigzagError(f"analysis.h: {h} needs lags >= {h - 1}, the files of runs.{name} have lags "
                                  f"{run['lags']}; record with more lags or lower h")
            continue
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
            if "trajectory" in runs[name]:
                raise ZigzagError(f"claims.{group}: run {name!r} is a trajectory run; the claims train every run "
                                  f"on claims.seeds")
    early = config["claims"]["thresholds"]["early_steps"]
    for name in claim_groups(config).get("cnn", []):
        if runs[name].get("steps") is not None and early >= runs[name]["steps"]:
            raise ZigzagError(f"claims.thresholds.early_steps: {early} leaves no later step in runs.{name} "
                              f"({runs[name]['steps']} steps); lower it below {runs[name]['steps']}")
    for section in ("figures", "tables"):
        for fid, spec in config[section].items():
            if "sweep" in spec and spec["sweep"] not in config["sweeps"]:
                raise ZigzagError(f"{section}.{fid}.sweep: {spec['sweep']!r} is not defined; defined sweeps: "
                                  f"{', '.join(config['sweeps']) or 'none'}")
            needs = kind_of(spec).needs if section == "figures" else None
            for where, run, step in entry_references(section, fid, spec):
                if run not in runs:
                    raise ZigzagError(f"{where}.run: {run!r} is not defined; defined runs: {', '.join(runs)}")
                if needs and runs[run].get(needs) in (None, False, "none") and "trajectory" in runs[run]:
                    raise ZigzagError(f"{where}.run: kind {spec['kind']} reads what {needs} records, but the files "
                                      f"of runs.{run} lack it; record them with it")
                if needs and runs[run].get(needs) in (None, False, "none"):
                    raise ZigzagError(f"{where}.run: kind {spec['kind']} reads what {needs} records, but runs.{run} "
                                      f"has {needs} {runs[run].get(needs)!r}; set it in runs.{run}")
                steps = runs[run].get("steps")
                if isinstance(step, int) and steps is not None and step + h > steps:
                    raise ZigzagError(f"{where}: window at step {step} needs steps {step}..{step + h - 1} but "
                                      f"runs.{run}.steps is {steps}; allowed: 0..{steps - h}")


def _check_run_settings(name: str, run: dict) -> None:
    """What the trainer itself checks (e.g. a change point beyond the budget), before any job starts."""
    from zigzag.runconfig import RunConfig

    try:
        RunConfig.from_dict(single_seed_settings(run, run.get("seeds", [run["seed"]])[0], "<dataset>"))
        if is_custom(run["model"]) and factory_file(run["model"], (os.getcwd(),)) is None:
            module = run["model"].partition(":")[0]
            raise ZigzagError(f"model {run['model']}: cannot find module {module} in the workflow's directory "
                              f"({os.getcwd()}) or on PYTHONPATH")
    except ZigzagError as err:
        raise ZigzagError(f"runs.{name}: {err}") from None


def add_sharpness_figures(config: dict) -> dict:
    """Add a figure ``sharpness_<run>`` (kind sharpness) for every run that records sharpness, unless the
    config defines that id itself: ``all_figures`` draws every run's sharpness without a figure entry per
    run (README, "Sharpness"); not for a sweep's runs, whose phase diagram marks where the sharpness reaches 2/lr.
    The workflow calls this after ``checked_config``; returns ``config``."""
    in_sweeps = {run for sweep in config["sweeps"].values() for run in sweep["runs"]}
    for name, run in config["runs"].items():
        if run["sharpness"].get("every", "none") != "none" and name not in in_sweeps:
            config["figures"].setdefault(f"sharpness_{name}", {
                "kind": "sharpness", "run": name,
                "title": f"Sharpness and gradient geometry: {name} (lr {run.get('lr', 'scheduled')})"})
    return config
