"""The figure kinds' one declaration agrees with the schema's fields, the renderers and the command line."""

import copy
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from zigzag import cli, configcheck, figures
from zigzag.figurekinds import KINDS, RUNS_FORMS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = configcheck.load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def schema_blocks() -> dict[str, dict]:
    """Kind -> the ``then`` block of the schema (as the workflow loads it) that declares its fields."""
    blocks = {}
    for rule in SCHEMA["properties"]["figures"]["additionalProperties"]["allOf"]:
        condition = rule["if"]["properties"]["kind"]
        for kind in condition.get("enum", [condition.get("const")]):
            blocks[kind] = rule["then"]
    return blocks


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_declares_its_fields_in_the_schema(name):
    kind, block = KINDS[name], schema_blocks().get(name)
    assert block is not None, f"the schema declares no fields of kind {name}"
    assert kind.runs in RUNS_FORMS and kind.seeds in ("first", "all") and set(kind.reads) <= {"trajectory", "analysis"}
    assert kind.runs in block["required"] and set(block["properties"]) >= {"kind", "title", kind.runs}
    assert ("steps" in block["properties"]) == kind.windows


def test_the_schema_declares_no_kind_the_registry_lacks():
    assert set(schema_blocks()) == set(KINDS)


def test_every_renderer_is_named_by_one_kind():
    builders = {name for name, fn in inspect.getmembers(figures, inspect.isfunction) if name.startswith("build_")}
    assert sorted(kind.renderer for kind in KINDS.values()) == sorted(builders)


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_resolves_its_renderer_to_a_function_of_the_figures_module(name):
    builder = KINDS[name].builder()
    assert callable(builder) and builder is getattr(figures, KINDS[name].renderer)
    assert builder.__module__ == figures.__name__


def test_the_registry_and_curve_reading_import_no_matplotlib_nor_torch():
    """Snakemake loads the registry at every planning; the curves are read without drawing them."""
    code = ("import sys, zigzag.figurekinds, zigzag.curves, zigzag.onsets; "
            "heavy = sorted(m for m in ('matplotlib', 'torch') if m in sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_kind_is_a_figure_subcommand_with_the_flags_of_what_it_reads():
    parser = cli.build_parser()
    figure = next(a for a in parser._subparsers._group_actions[0].choices["figure"]._actions
                  if a.dest == "kind")
    assert sorted(figure.choices) == sorted(kind.command for kind in KINDS.values())
    for kind in KINDS.values():
        flags = {opt for action in figure.choices[kind.command]._actions for opt in action.option_strings}
        expected = ({"--panel"} if kind.runs == "panels" else
                    {f"--{name}" for name in kind.reads} if kind.seeds == "first" else {"--curve"})
        expected |= {"--steps"} if kind.windows else set()
        assert flags - {"-h", "--help", "--title", "--png", "--pdf"} == expected


@pytest.mark.parametrize("kind, setting, spec", [
    ("layers", "per_layer", {"kind": "layers", "run": "r", "title": "t"}),
    ("divergence", "raw_parameters", {"kind": "divergence", "title": "t",
                                      "panels": [{"run": "r", "label": "a"}, {"run": "r", "label": "b"}]}),
])
def test_a_kind_that_needs_a_recording_refuses_a_run_without_it(kind, setting, spec):
    """The config check stops, in one line naming the setting, a figure whose run does not record what its kind
    reads (``FigureKind.needs``); with the setting on, the same figure passes."""
    from zigzag.errors import ZigzagError

    assert KINDS[kind].needs == setting
    schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    run = {"dataset": "d", "model": "cnn", "width": 0.5, "batch_norm": False, "lr": 0.1, "steps": 20,
           "micro_batch": 100}

    def config(**settings):
        return {"datasets": {"d": {"source": "mnist5k", "train_size": 100}}, "runs": {"r": {**run, **settings}},
                "figures": {"f": copy.deepcopy(spec)}}

    with pytest.raises(ZigzagError, match=rf"^figures\.f.*run: kind {kind} reads what {setting} records"):
        configcheck.checked_config(config(), schema)
    configcheck.checked_config(config(**{setting: True if setting == "per_layer" else "every:1"}), schema)
