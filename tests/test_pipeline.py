"""The workflow's plan: what a figure rule's command reads is what the rule lists as inputs, for every
figure of the shipped configs; the config's one addition (sharpness figures) is explicit."""

import shlex
from pathlib import Path

import pytest
import yaml

from zigzag import cli, configcheck, figures, pipeline, store
from zigzag.errors import ZigzagError
from zigzag.figurekinds import KINDS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def load(configfile: str) -> dict:
    return configcheck.checked_config(yaml.safe_load((ROOT / configfile).read_text()), SCHEMA)


@pytest.mark.parametrize("configfile", ["config.yaml", "presets/paper.yaml"])
def test_each_figure_command_reads_exactly_its_rule_inputs(configfile, monkeypatch):
    config = configcheck.add_sharpness_figures(load(configfile))
    calls = []
    monkeypatch.setattr(store, "check_outputs", lambda outputs, inputs: calls.append(("inputs", sorted(inputs))))
    monkeypatch.setattr(figures, "render", lambda kind, inputs, title, png, pdf, **options: calls.append(
        ("render", kind, title, png, options)))
    for fid, spec in config["figures"].items():
        calls.clear()
        assert cli.main(["figure", *shlex.split(pipeline.figure_command(config, fid, spec))]) == 0
        (_, read), (_, kind, title, png, options) = calls
        planned = pipeline.figure_inputs(config, spec)
        assert read == sorted(path for files in planned.values() for path in files), fid
        assert set(planned) == set(figures.KINDS[spec["kind"]].reads)
        assert (kind, title, png) == (spec["kind"], spec["title"], f"{config['results']}/figures/{fid}.png")
        assert ("steps" in options) == (spec["kind"] == "trajectory")


def test_a_curve_figure_reads_every_seed_and_a_matrix_figure_the_first():
    config = load("config.yaml")
    warmup, sign = config["figures"]["fig7_warmup"], config["figures"]["fig8_sign_shift"]
    assert pipeline.figure_inputs(config, warmup) == {
        "trajectory": ["results/runs/sgd_wu_t12-seed0/trajectory.h5", "results/runs/sgd_wu_t12-seed1/trajectory.h5"],
        "analysis": ["results/analysis/sgd_wu_t12-seed0.h5", "results/analysis/sgd_wu_t12-seed1.h5"]}
    assert pipeline.figure_inputs(config, sign) == {
        "analysis": ["results/analysis/cnn_lr0.1.h5", "results/analysis/resnet18_lr0.1.h5"]}


def test_sharpness_figures_are_added_explicitly_and_a_given_id_wins():
    config = load("config.yaml")
    assert not [fid for fid in config["figures"] if fid.startswith("sharpness_")]  # checking adds nothing
    config["figures"]["sharpness_vgg16_lr0.01"] = {"kind": "trajectory", "run": "vgg16_lr0.01", "title": "mine"}
    configcheck.add_sharpness_figures(config)
    added = {fid: spec for fid, spec in config["figures"].items() if fid.startswith("sharpness_")}
    assert sorted(added) == ["sharpness_cnn_lr0.1", "sharpness_resnet18_lr0.1", "sharpness_vgg16_lr0.01"]
    assert added["sharpness_cnn_lr0.1"] == {"kind": "sharpness", "run": "cnn_lr0.1",
                                            "title": "Sharpness and gradient geometry: cnn_lr0.1 (lr 0.1)"}
    assert added["sharpness_vgg16_lr0.01"]["title"] == "mine"


def test_an_unknown_kind_is_one_line_naming_the_registry_kinds():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["figures"]["fig1_cnn"]["kind"] = "trajectori"
    with pytest.raises(ZigzagError) as raised:
        configcheck.checked_config(config, SCHEMA)
    assert str(raised.value) == f"figures.fig1_cnn.kind: 'trajectori' is not allowed; allowed: {', '.join(KINDS)}"
    assert list(KINDS)[:6] == ["trajectory", "sign_shift", "warmup", "batch_sizes", "schedules", "sharpness"]
