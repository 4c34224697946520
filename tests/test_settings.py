"""Settings declared once (zigzag/settings.py): the train/analyze flags, the checks and the config schema's
``runs`` and ``analysis`` sections all come from ``RunConfig`` and ``AnalysisConfig``."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from zigzag import analysis, configcheck, pipeline, sharpness
from zigzag.analysisconfig import AnalysisConfig
from zigzag.claims import GROUPS, OVERALL_RULES, THRESHOLDS
from zigzag.cli import build_parser
from zigzag.data import SOURCES
from zigzag.errors import ZigzagError
from zigzag.figurekinds import KINDS
from zigzag.runconfig import MAX_LAGS, MAX_WIDTH, SCHEDULE, SHARPNESS, RunConfig
from zigzag.scheduleconfig import WINDOW_H
from zigzag.settings import MAX_SEED, MAX_STEPS, specs

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def flags(command: str) -> dict:
    """dest -> argparse action of a subcommand."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest: a for a in sub._actions}


def config(**runs) -> dict:
    return {"datasets": {"d": {"source": "mnist5k"}}, "figures": {},
            "runs": runs or {"r": {"dataset": "d", "model": "cnn", "lr": 0.1, "steps": 10}}}


def test_every_run_setting_is_a_train_flag_and_a_config_key_with_its_default():
    schema = configcheck.load_schema(SCHEMA)["properties"]["runs"]["additionalProperties"]
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(RunConfig)} | {"seeds", "processes"}
    assert schema["required"] == ["dataset", "model"]
    train = flags("train")
    for name, spec in specs(RunConfig).items():
        if name in ("schedule", "model_args"):  # mappings set in a config file only
            continue
        assert name in train and train[name].default is None, name  # not given: the config's value stays
        assert (schema["properties"][name].get("default") == spec.default) or spec.unset or not spec.fill
    assert set(schema["properties"]["sharpness"]["properties"]) == set(SHARPNESS)
    assert set(schema["properties"]["schedule"]["properties"]) == set(SCHEDULE)
    assert train["batch_norm"].option_strings == ["--batch-norm", "--no-batch-norm"]
    assert "--compile" in train["compile"].option_strings and "--sharpness" in train["sharpness"].option_strings
    assert "--precision" in train["precision"].option_strings and "--micro-batch" in train["micro_batch"].option_strings


def test_the_lanczos_defaults_are_declared_once():
    """The run's defaults are the solver's (tol 1e-3; ncv 20 for a cold start, 8 warm) and the solve steps' (refined
    every 2 steps from 0.5 to 0.9 x 2/lr), and the schema says so."""
    run = RunConfig.from_dict({"dataset": "d", "model": "cnn", "lr": 0.1, "steps": 3, "sharpness": {"every": "0"}})
    solver = inspect.signature(sharpness.top_eigenpair_of).parameters
    assert run.sharpness_setting("tol") == solver["tol"].default == sharpness.TOL == 1e-3
    assert run.sharpness_setting("max_iter") == solver["max_iter"].default == sharpness.MAX_ITER
    assert run.sharpness_setting("ncv") is None and solver["ncv"].default is None
    ncv = configcheck.load_schema(SCHEMA)["properties"]["runs"]["additionalProperties"]["properties"]["sharpness"]
    assert "default 20 for the first solve, 8 for the next" in ncv["properties"]["ncv"]["description"]
    assert "(default 0.001)" in ncv["properties"]["tol"]["description"]
    steps = inspect.signature(sharpness.SolveSteps).parameters
    for key, default in (("every", 2), ("from", 0.5), ("until", 0.9)):
        assert run.sharpness_setting(f"refine_{key}") == steps[f"refine_{key}"].default == default
        assert f"(default {default})" in ncv["properties"][f"refine_{key}"]["description"]


def test_the_window_h_and_the_eos_tolerance_are_declared_once():
    """The paper's h = 5 is the default of the analysis's h, of GAWU's h (the scheduler, its monitor and a run's
    schedule) and of the change point the analysis finds again; the sharpness is refined up to the analysis's
    threshold of the edge of stability."""
    from zigzag.schedules import GAWU, GradientCorrelationMonitor

    assert WINDOW_H == 5
    defaults = {AnalysisConfig().h, SCHEDULE["h"].default, analysis.change_point_rule({}, 1)["h"],
                inspect.signature(GAWU).parameters["h"].default,
                inspect.signature(GradientCorrelationMonitor).parameters["h"].default}
    assert defaults == {WINDOW_H}
    assert inspect.signature(analysis.analyze).parameters["eos_tolerance"].default == AnalysisConfig().eos_tolerance
    assert sharpness.REFINE_UNTIL == pytest.approx(1 - AnalysisConfig().eos_tolerance)


def test_the_schema_file_leaves_to_the_registries_what_they_declare():
    """The YAML file names no dataset source, figure kind, claim group or overall rule: the workflow's schema takes
    them from data.SOURCES, figurekinds.KINDS and claims (GROUPS, OVERALL_RULES, THRESHOLDS)."""
    written = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert "enum" not in written["datasets"]["additionalProperties"]["properties"]["source"]
    assert "allOf" not in written["figures"]["additionalProperties"]
    assert set(written["claims"]["properties"]) == {"seeds", "overall", "thresholds"}
    assert "enum" not in written["claims"]["properties"]["overall"]
    loaded = configcheck.load_schema(SCHEMA)["properties"]
    assert loaded["datasets"]["additionalProperties"]["properties"]["source"]["enum"] == list(SOURCES)
    claims = loaded["claims"]["properties"]
    assert set(claims) == {"seeds", "overall", "thresholds", *GROUPS}
    assert claims["overall"]["enum"] == list(OVERALL_RULES)
    kinds = [kind for block in loaded["figures"]["additionalProperties"]["allOf"]
             for kind in block["if"]["properties"]["kind"]["enum"]]
    assert sorted(kinds) == sorted(KINDS)


def test_change_point_beyond_the_run_is_checked_once_for_every_unit():
    base = {"dataset": "d", "model": "cnn", "optimizer": "sgd", "epochs": 3, "batch_size": 10,
            "schedule": {"kind": "warmup_cosine", "eta0": 0.01, "omega": 0.1, "change_point": 3}}
    with pytest.raises(ZigzagError, match=r"change_point=3: beyond the budget of 3 epochs; must be in 0..2"):
        RunConfig.from_dict(base)
    per_iteration = RunConfig.from_dict({**base, "schedule": {**base["schedule"], "unit": "iteration"}})
    per_iteration.check_change_point(batches_per_epoch=2)  # 6 iterations: t = 3 lies inside
    with pytest.raises(ZigzagError, match=r"beyond the budget of 3 iterations; must be in 0..2"):
        per_iteration.check_change_point(batches_per_epoch=1)
    with pytest.raises(ZigzagError, match=r"beyond the budget of 3 steps"):
        RunConfig.from_dict({**base, "optimizer": "gd", "steps": 3})


@pytest.mark.parametrize("run, message", [
    ({"optimizer": "sgd", "epochs": 2, "lr": 0.1}, "runs.r: missing run setting(s) batch_size (optimizer sgd)"),
    ({"lr": 0.1}, "runs.r: missing run setting(s) steps (optimizer gd)"),
    ({"steps": 5}, "runs.r: missing run setting(s) lr (optimizer gd, constant lr)"),
    ({"steps": 5, "lr": 0.1, "sharpness": {"ncv": 2}}, "runs.r.sharpness.ncv: 2 is not allowed; must be >= 3"),
    ({"steps": 5, "lr": 0.1, "momentum": 1}, "runs.r.momentum: 1 is not allowed; must be < 1"),
    ({"steps": 5, "lr": 0.1, "schedule": {"kind": "gawu", "omega": 0.1}},
     "runs.r: invalid schedule.eta0=None: must be a number > 0"),
])
def test_a_bad_run_entry_is_one_line_naming_it(run, message):
    with pytest.raises(ZigzagError) as err:
        configcheck.checked_config(config(r={"dataset": "d", "model": "cnn", **run}), SCHEMA)
    assert str(err.value) == message


def test_analysis_flags_checks_and_config_section_agree():
    declared = specs(AnalysisConfig)
    schema = configcheck.load_schema(SCHEMA)["properties"]["analysis"]
    assert set(schema["properties"]) == set(declared) - {"windows"}  # windows: from the figures of each job
    analyze = flags("analyze")
    assert {name: analyze[name].default for name in declared} == {n: s.default for n, s in declared.items()}
    checked = configcheck.checked_config({**config(), "analysis": {"h": 4, "zigzag_below": -0.7}}, SCHEMA)
    args = build_parser().parse_args(["analyze", "t.h5", "--out", "a.h5",
                                      *pipeline.analysis_args(checked, "r").split()])
    assert AnalysisConfig(**{name: getattr(args, name) for name in declared}) == \
        AnalysisConfig(**checked["analysis"], windows="none")
    with pytest.raises(ZigzagError, match="^analysis: invalid thresholds: zigzag_below=0.6 > smooth_above=0.5$"):
        configcheck.checked_config({**config(), "analysis": {"zigzag_below": 0.6}}, SCHEMA)
    with pytest.raises(ZigzagError, match=r"^analysis.eos_tolerance: 1 is not allowed; must be < 1$"):
        configcheck.checked_config({**config(), "analysis": {"eos_tolerance": 1}}, SCHEMA)


def test_every_bound_is_in_the_help_and_in_the_schema():
    """The help states each bound of what a run can index or a machine can hold, and the config's schema
    refuses the same values (its literal bounds are the code's)."""
    train = flags("train")
    assert "an integer in [1, 10000000]" in train["steps"].help and str(MAX_STEPS) == "10000000"
    assert "an integer in [1, 10000000]" in train["epochs"].help
    assert "a number in (0, 1024]" in train["width"].help and MAX_WIDTH == 1024
    assert "an integer in [0, 4294967295]" in train["seed"].help and MAX_SEED == 2**32 - 1
    assert "an integer in [1, 1000]" in train["lags"].help and MAX_LAGS == 1000
    assert "each below the run's steps" in train["raw_gradients"].help
    assert "an integer in [1, 1024]" in train["threads"].help
    assert "an integer in [0, 4294967295]" in flags("prepare")["seed"].help
    schema = configcheck.load_schema(SCHEMA)["properties"]
    run = schema["runs"]["additionalProperties"]["properties"]
    assert run["steps"]["maximum"] == run["epochs"]["maximum"] == MAX_STEPS
    assert run["raw_gradients"]["oneOf"][1]["items"]["maximum"] == MAX_STEPS - 1
    assert run["seed"]["maximum"] == run["seeds"]["items"]["maximum"] == MAX_SEED
    dataset = schema["datasets"]["additionalProperties"]["properties"]
    assert dataset["seed"]["maximum"] == schema["claims"]["properties"]["seeds"]["items"]["maximum"] == MAX_SEED
    assert dataset["train_size"]["maximum"] == max(source.train_images for source in SOURCES.values())
    figure = schema["figures"]["additionalProperties"]["allOf"]
    assert figure[0]["then"]["properties"]["steps"]["oneOf"][1]["items"]["maximum"] == MAX_STEPS - 1
    assert figure[1]["then"]["properties"]["panels"]["items"]["properties"]["step"]["oneOf"][1]["maximum"] == \
        MAX_STEPS - 1
    thresholds = schema["claims"]["properties"]["thresholds"]["properties"]
    assert set(thresholds) == set(THRESHOLDS) and thresholds["early_steps"]["maximum"] == MAX_STEPS
