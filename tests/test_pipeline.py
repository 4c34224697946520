"""The workflow's plan: what a figure rule's command reads is what the rule lists as inputs, for every
figure of the shipped configs; the config's one addition (sharpness figures) is explicit."""

import copy
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from zigzag import cli, configcheck, figures, pipeline, store
from zigzag.errors import ZigzagError
from zigzag.figurekinds import KINDS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def load(configfile: str) -> dict:
    """A shipped config, checked (a shipped config that no longer validates fails the tests that load it)."""
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
        outputs = [arg for ext in pipeline.FIGURE_EXTS for arg in (f"--{ext}", pipeline.figure_file(config, fid, ext))]
        assert cli.main(["figure", *shlex.split(pipeline.figure_command(config, spec)), *outputs]) == 0
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


# A config is data, never code: hostile strings reach every command literally, names that could leave
# `results` or split a command are refused, and every planned output lies inside `results`.
NAME = "^[A-Za-z0-9][A-Za-z0-9_.=-]*$"
RESULTS = "it's res$(touch PWNED2)"
DATA_ROOT = "$(touch PWNED)"
TEXT = "it's {x} `touch PWNED4` $(touch PWNED4)"


def tiny(**changes) -> dict:
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    config["tables"] = {"t1": {"kind": "schedules", "caption": "c", "rows": [{"run": "cnn_a", "label": "a"}]}}
    config.update(changes)
    return config


def hostile() -> dict:
    """The tiny config with every free-text string a shell payload (results, data_root, title, labels, caption)."""
    config = tiny(results=RESULTS)
    config["datasets"]["tiny"]["data_root"] = DATA_ROOT
    config["figures"]["fig_a"]["title"] = TEXT
    config["figures"]["fig_sign"]["panels"][0]["label"] = TEXT
    config["figures"]["curves"] = {"kind": "lag1", "title": TEXT, "curves": [{"run": "cnn_b", "label": TEXT}]}
    config["tables"]["t1"].update(caption=TEXT, rows=[{"run": "cnn_a", "label": TEXT}])
    return configcheck.checked_config(config, SCHEMA)


def after(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    return argv[i + 1:i + 4]


def test_hostile_strings_reach_every_planned_command_literally(tmp_path):
    config = hostile()
    traj = f"{RESULTS}/runs/cnn_a/trajectory.h5"
    commands = {
        "prepare": pipeline.dataset_args(config, "tiny"),
        "analyze": pipeline.analysis_args(config, "cnn_a"),
        **{fid: pipeline.figure_command(config, spec) for fid, spec in config["figures"].items()},
        "t1": pipeline.table_command(config, config["tables"]["t1"]),
    }
    argv = {name: shlex.split(command) for name, command in commands.items()}
    assert after(argv["prepare"], "--data-root")[0] == DATA_ROOT
    assert after(argv["fig_a"], "--trajectory")[0] == traj and after(argv["fig_a"], "--title")[0] == TEXT
    assert not {"--png", "--pdf", "--out"} & {arg for args in argv.values() for arg in args}  # the rules' {output}
    assert after(argv["fig_sign"], "--panel") == [f"{RESULTS}/analysis/cnn_a.h5", TEXT, "1"]
    assert after(argv["curves"], "--curve")[:2] == [TEXT, f"{RESULTS}/runs/cnn_b/trajectory.h5"]
    assert after(argv["t1"], "--row")[:2] == [TEXT, traj] and after(argv["t1"], "--caption")[0] == TEXT
    assert argv["analyze"][:2] == ["--h", "4"]
    # A real shell reads each command as these arguments and runs nothing.
    for name, command in commands.items():
        shell = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], cwd=tmp_path, capture_output=True,
                               text=True, check=True)
        assert shell.stdout.split("\0")[:-1] == argv[name], name
    assert not list(tmp_path.iterdir()) and not list(Path.cwd().glob("PWNED*"))


@pytest.mark.parametrize("section", ["runs", "datasets", "figures", "tables"])
@pytest.mark.parametrize("name", ["x;touch PWNED3;y", "../../../outside/x", "..", ".", "-x", "a b", "a/b", ""])
def test_a_name_outside_the_pattern_is_one_line_naming_it_and_the_pattern(section, name):
    config = tiny()
    first = next(iter(config[section]))
    config[section][name] = config[section][first]
    with pytest.raises(ZigzagError) as raised:
        configcheck.checked_config(config, SCHEMA)
    assert str(raised.value) == f"{section}: name {name!r} is not allowed; names must match {NAME}"


def test_every_name_is_checked_by_the_one_pattern():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["$defs"]["name"]["pattern"] == NAME
    named = {key for key, section in schema["properties"].items() if "propertyNames" in section}
    assert named == {"runs", "datasets", "sweeps", "figures", "tables"}
    assert all(schema["properties"][key]["propertyNames"] == {"$ref": "#/$defs/name"} for key in named)
    config = tiny()
    config["runs"]["cnn_a=0.1_x-y"] = config["runs"]["cnn_a"]
    configcheck.checked_config(config, SCHEMA)


@pytest.mark.parametrize("results, message", [
    ("", "results: '' is not allowed; must have at least 1 character(s)"),
    ("/", "results: '/' is not allowed; must be a folder other than /"),
    ("//", "results: '//' is not allowed; must be a folder other than //"),
    ("/tmp/../..", "results: '/tmp/../..' is not allowed; must be a folder other than /"),
    ("res{job}", "results: 'res{job}' is not allowed; must not contain { or } (Snakemake wildcards)"),
    (3, "results: 3 is not of type 'string'"),
])
def test_results_must_be_a_folder_other_than_the_root(results, message):
    with pytest.raises(ZigzagError) as raised:
        configcheck.checked_config(tiny(results=results), SCHEMA)
    assert str(raised.value) == message


@pytest.mark.parametrize("results", ["results", ".", "../elsewhere/res", "/tmp/zigzag results", RESULTS])
def test_every_planned_output_lies_inside_results(results):
    config = configcheck.add_sharpness_figures(configcheck.checked_config(tiny(results=results), SCHEMA))
    root = Path(results).absolute()
    outputs = pipeline.planned_outputs(config)
    assert len(outputs) == 1 + 2 * 1 + 5 * 2 + 3 * 3 + 4 * 2  # gpu-locks, data, jobs, figures, tables
    for path in outputs:
        assert Path(path).absolute().resolve().is_relative_to(root.resolve()) and Path(path) != Path(results), path


@pytest.mark.parametrize("section, key", [("figures", "fig_a"), ("tables", "t1"), ("datasets", "tiny"),
                                          ("runs", "cnn_a")])
def test_the_check_refuses_an_output_outside_results_even_past_the_schema(section, key):
    """The containment check stands on its own: a name the pattern would have caught still cannot leave."""
    config = configcheck.add_sharpness_figures(configcheck.checked_config(tiny(), SCHEMA))
    config[section]["../../../outside/x"] = config[section].pop(key)
    with pytest.raises(ZigzagError) as raised:
        configcheck._check_outputs_inside_results(config)
    assert str(raised.value).startswith("results: 'results/") and "../../../outside/x" in str(raised.value)
    assert str(raised.value).endswith("would lie outside 'results'; rename the entry that names it")


# ---------------------------------------------------------------------------------------------
# Job costs and the order jobs start in.


def test_the_default_config_trains_the_quickest_figure_first_then_the_longest_jobs():
    """config.yaml: Figure 9's three short SGD runs are the cheapest figure and train first; the other jobs
    follow longest first (by estimated cost), and analyses and figures go before any training job."""
    config = configcheck.add_sharpness_figures(load("config.yaml"))
    figure_costs = {fid: sum(pipeline.job_cost(config, job) for job in pipeline.figure_jobs(config, spec))
                    for fid, spec in config["figures"].items()}
    assert pipeline.quickest_figure(config) == "fig9_batch_sizes" == min(figure_costs, key=figure_costs.get)
    priorities = pipeline.train_priorities(config)
    order = sorted(priorities, key=priorities.get, reverse=True)
    assert set(priorities) == set(pipeline.all_jobs(config))
    assert sorted(order[:3]) == ["sgd_b125", "sgd_b250", "sgd_b50"]
    costs = [pipeline.job_cost(config, job) for job in order[3:]]
    assert costs == sorted(costs, reverse=True) and order[3] == "resnet18_lr0.1"
    assert sorted(priorities.values()) == list(range(1, len(order) + 1))
    assert pipeline.finishing_priority(config) > max(priorities.values())


def test_a_job_costs_its_gradients_and_sharpness_solves_times_the_models_size():
    config = configcheck.checked_config(tiny(), SCHEMA)  # 100 images; cnn_a: GD, width 0.25, 10 steps
    run = config["runs"]["cnn_a"]
    per_image = pipeline.GRADIENT_FORWARDS * pipeline.MODEL_MMACS["cnn"] * 0.25 ** 2 / 1e3
    assert pipeline.job_cost(config, "cnn_a") == pytest.approx(10 * 100 * per_image)
    run["width"] = 0.5
    assert pipeline.job_cost(config, "cnn_a") == pytest.approx(4 * 10 * 100 * per_image)
    run.update(width=0.25, sharpness={"every": "every:4", "subset": 50})  # solves at steps 0, 4, 8
    solves = 3 * pipeline.HVPS_PER_SOLVE * pipeline.HVP_GRADIENTS * 50
    assert pipeline.job_cost(config, "cnn_a") == pytest.approx((10 * 100 + solves) * per_image)
    run["sharpness"] = {"every": [0, 9]}  # the whole set, twice
    assert pipeline.job_cost(config, "cnn_a") == pytest.approx(
        (10 * 100 + 2 * pipeline.HVPS_PER_SOLVE * pipeline.HVP_GRADIENTS * 100) * per_image)
    run.update(sharpness={}, optimizer="sgd", batch_size=30, epochs=2)  # 3 batches of 30 per epoch
    assert pipeline.job_cost(config, "cnn_a") == pytest.approx(2 * 3 * 30 * per_image)


def test_the_model_costs_are_the_models_flop_counts():
    """MODEL_MMACS holds every model's forward multiply-adds at width 1 on a 32 x 32 image, as torch counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zigzag.modelimport import MODELS
    from zigzag.models import build_model

    assert set(pipeline.MODEL_MMACS) == set(MODELS)
    for name in MODELS:
        with FlopCounterMode(display=False) as counter:
            build_model(name, in_channels=1, image_size=32)(torch.zeros(1, 1, 32, 32))
        assert pipeline.MODEL_MMACS[name] == pytest.approx(counter.get_total_flops() / 2 / 1e6, rel=0.01), name


def test_usable_cpus_are_the_processes_affinity(monkeypatch):
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert pipeline.usable_cpus() == 3


def test_a_from_dataset_is_resolved_against_the_config_folder_and_prepared_from_it(tmp_path):
    """``from`` is relative to the config file's folder: resolved in place, the prepare job's ``--from`` and inputs
    (a folder's: every file under it, so that the workflow prepares again when one changes, appears or goes; the
    rerun itself: tests/test_example.py); a missing one, or one with a torchvision setting, is one line."""
    (tmp_path / "mine.npz").write_bytes(b"")
    config = tiny()
    config["datasets"]["tiny"] = {"from": "mine.npz", "train_size": 50}
    checked = configcheck.checked_config(copy.deepcopy(config), SCHEMA, tmp_path)
    path = str(tmp_path / "mine.npz")
    assert pipeline.dataset_args(checked, "tiny") == f"--from {path} --seed 0 --train-size 50"
    assert pipeline.dataset_inputs(checked, "tiny") == [path]
    for name in ("train/dog/1.png", "train/cat/2.png", "test/dog/3.png"):  # a folder: each of its files, sorted
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / name).write_bytes(b"")
    config["datasets"]["tiny"]["from"] = "imgs"
    checked = configcheck.checked_config(copy.deepcopy(config), SCHEMA, tmp_path)
    assert pipeline.dataset_inputs(checked, "tiny") == [str(tmp_path / "imgs" / name) for name in
                                                        ("test/dog/3.png", "train/cat/2.png", "train/dog/1.png")]
    config["datasets"]["tiny"]["from"] = "mine.npz"
    with pytest.raises(ZigzagError, match=r"^datasets\.tiny\.from: 'mine\.npz' not found"):
        configcheck.checked_config(copy.deepcopy(config), SCHEMA, tmp_path / "elsewhere")
    config["datasets"]["tiny"]["download"] = True
    with pytest.raises(ZigzagError, match="data_root and download are for the built-in sources"):
        configcheck.checked_config(config, SCHEMA, tmp_path)


def test_a_run_of_several_processes_launches_torchrun_with_one_gpu_each():
    """processes: N is the workflow's (not a setting of ``zigzag train``): the rule starts torchrun with N
    processes on one node and asks for N GPUs on CUDA; 1 (the default) is the plain command; 0 is refused."""
    config = tiny()
    config["runs"]["cnn_a"].update(processes=2, device="cuda")
    config = configcheck.checked_config(config, SCHEMA)
    job = pipeline.run_jobs(config, "cnn_a")[0]
    launch = shlex.split(pipeline.train_launcher(config, job))
    assert launch[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "zigzag"]
    assert pipeline.uses_gpu(config, job) * pipeline.run_processes(config, job) == 2
    assert "processes" not in pipeline.run_settings(config, job, "data.h5")
    other = next(j for j in pipeline.all_jobs(config) if pipeline.run_of(config, j) != "cnn_a")
    assert pipeline.train_launcher(config, other) == "zigzag" and pipeline.run_processes(config, other) == 1
    config = tiny()
    config["runs"]["cnn_a"]["processes"] = 0
    with pytest.raises(ZigzagError, match="processes"):
        configcheck.checked_config(config, SCHEMA)
