"""The Snakemake workflow end to end on a tiny config, and which stages a change re-runs."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from zigzag import configcheck
from zigzag.errors import ZigzagError

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
pytestmark = pytest.mark.workflow


def snakemake(workdir, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(workdir)}  # the copied package, so a test may edit it
    result = subprocess.run([*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True, text=True,
                            env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(workdir) -> dict[str, int]:
    """Rule -> job count of what ``all_figures`` would run now (parsed from the dry run's job stats)."""
    out = snakemake(workdir, "-n", "all_figures").stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def edit_config(workdir, change):
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def workdir(built_workflow, tmp_path):
    """A fresh copy of the `.test` workflow built once per session (conftest.py, ``built_workflow``), per test
    (outputs, metadata and mtimes preserved)."""
    copy = tmp_path / "wf"
    shutil.copytree(built_workflow, copy, symlinks=True)
    return copy


def test_all_figures_builds_every_figure_and_report(workdir):
    """Built by the multi-GPU workstation command: each training job leased one of the two GPU slots."""
    for fid in ("fig_a", "fig_b", "fig_sign"):
        for ext in ("png", "pdf"):
            assert (workdir / "results" / "figures" / f"{fid}.{ext}").stat().st_size > 1000
    with h5py.File(workdir / "results" / "analysis" / "cnn_a.h5", "r") as f:
        assert f.attrs["h"] == 4 and f["windows/steps"][()].tolist() == [1, 6]
    with h5py.File(workdir / "results" / "analysis" / "cnn_b.h5", "r") as f:  # fig_b: steps auto, fig_sign: 2
        roles = [r.decode() for r in f["windows/roles"][()]]
        assert 2 in f["windows/steps"][()].tolist() and "late" in roles
    with h5py.File(workdir / "results" / "runs" / "cnn_b" / "trajectory.h5", "r") as f:
        assert f.attrs["status"] == "completed" and f["steps/dot"].shape == (10, 4)
    assert (workdir / "results" / "benchmarks" / "train" / "cnn_a.tsv").exists()
    assert (workdir / "results" / "logs" / "train" / "cnn_a.log").exists()
    for run in ("cnn_a", "cnn_b"):
        with h5py.File(workdir / "results" / "runs" / run / "trajectory.h5", "r") as f:
            assert f.attrs["gpu_lease"] in (0, 1) and f.attrs["gpu_given"] == ""
    assert sorted(p.name for p in (workdir / "results" / "gpu-locks").iterdir()) <= ["gpu0.lock", "gpu1.lock"]
    snakemake(workdir, "all_figures", "--report", "report.html")
    assert (workdir / "report.html").stat().st_size > 10_000


def test_nothing_changed_nothing_to_do(workdir):
    assert planned_jobs(workdir) == {}


def test_changed_lr_reruns_only_that_run_and_its_figures(workdir):
    edit_config(workdir, lambda c: c["runs"]["cnn_b"].update(lr=0.07))
    assert planned_jobs(workdir) == {"train": 1, "analyze": 1, "figure_fig_b": 1, "figure_fig_sign": 1,
                                     "all_figures": 1}


def test_changed_h_or_shown_steps_never_retrains(workdir):
    edit_config(workdir, lambda c: c["analysis"].update(h=3))
    assert planned_jobs(workdir) == {"analyze": 2, "figure_fig_a": 1, "figure_fig_b": 1, "figure_fig_sign": 1,
                                     "all_figures": 1}
    edit_config(workdir, lambda c: c["analysis"].update(h=4))
    edit_config(workdir, lambda c: c["figures"]["fig_b"].update(steps=[3]))
    assert planned_jobs(workdir) == {"analyze": 1, "figure_fig_b": 1, "figure_fig_sign": 1, "all_figures": 1}


def test_edited_plotting_module_reruns_figures_only(workdir):
    with open(workdir / "zigzag" / "figures.py", "a") as f:
        f.write("\n# an edit\n")
    assert planned_jobs(workdir) == {"figure_fig_a": 1, "figure_fig_b": 1, "figure_fig_sign": 1, "all_figures": 1}


def test_edited_trainer_reruns_training_and_everything_after(workdir):
    with open(workdir / "zigzag" / "trainer.py", "a") as f:
        f.write("\n# an edit\n")
    assert planned_jobs(workdir) == {"train": 2, "analyze": 2, "figure_fig_a": 1, "figure_fig_b": 1,
                                     "figure_fig_sign": 1, "all_figures": 1}


BAD_CONFIGS = {
    "model": (lambda c: c["runs"]["cnn_a"].update(model="mlp"),
              "runs.cnn_a: unknown model 'mlp'; valid models: cnn,"),
    "key": (lambda c: c["runs"]["cnn_a"].update(lrr=0.1), "runs.cnn_a: unknown key 'lrr'; allowed:"),
    "run": (lambda c: c["figures"]["fig_a"].update(run="nope"), "figures.fig_a.run: 'nope' is not defined"),
    "lr": (lambda c: c["runs"]["cnn_b"].update(lr=0), "runs.cnn_b.lr: 0 is not allowed; must be > 0"),
    "h": (lambda c: c["analysis"].update(h=5), "analysis.h: 5 needs lags >= 4"),
    "subset": (lambda c: c["runs"]["cnn_a"].update(sharpness={"every": "every:5", "subset": 50}),
               "runs.cnn_a: invalid sharpness.subset=50: with BatchNorm it must be a multiple of micro_batch=100"),
    "name": (lambda c: c["figures"].update({"x;touch PWNED3;y": c["figures"]["fig_a"]}),
             "figures: name 'x;touch PWNED3;y' is not allowed; names must match ^[A-Za-z0-9][A-Za-z0-9_.=-]*$"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_is_refused_by_the_check_with_one_line(case):
    """The workflow's config check, in-process (what Snakemake does with its error: the test below)."""
    change, message = BAD_CONFIGS[case]
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    change(config)
    with pytest.raises(ZigzagError) as err:
        configcheck.checked_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_config_fails_before_any_job_with_one_line(workdir):
    """Snakemake with a bad config (a figure name that would run a command): the check's one line, exit
    non-zero, no job planned nor run."""
    change, message = BAD_CONFIGS["name"]
    edit_config(workdir, change)
    result = snakemake(workdir, "all_figures", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("zigzag: config error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Building DAG" not in result.stderr + result.stdout
    assert not list(workdir.rglob("PWNED*"))


def test_config_strings_reach_every_rule_command_literally(tmp_path):
    """A config is data: payloads in results, data_root, a title, labels and a caption run nothing while
    Snakemake plans (a dry run), and a real shell reads every rule's printed command as the literal strings
    (run with a stand-in ``zigzag`` that records its arguments), outputs named as the rules' ``{output}``; the
    rules write exactly the files ``zigzag.pipeline`` plans."""
    results, data_root, text = "it's res$(touch PWNED2)", "$(touch PWNED)", "it's {x} `touch PWNED4` $(touch PWNED4)"
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    trained = ["cnn_a", "cnn_b"]
    config.update(results=results, claims={"cnn": ["cnn_a"], "thresholds": {"early_steps": 4}},
                  tables={"t1": {"kind": "schedules", "caption": text, "rows": [{"run": "cnn_a", "label": text}]}})
    config["datasets"]["tiny"]["data_root"] = data_root
    config["figures"]["fig_a"]["title"] = config["figures"]["fig_sign"]["panels"][0]["label"] = text
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry = subprocess.run([*SNAKEMAKE, "-n", "-p", "--cores", "1", "all", "--snakefile", str(ROOT / "Snakefile")],
                         cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert dry.returncode == 0, dry.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".snakemake", "config.yaml"]  # planning ran nothing

    commands, rule = {}, None
    for line in dry.stdout.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif line.startswith("Shell command: ") and rule != "all":
            commands.setdefault(rule, []).append(line.removeprefix("Shell command: "))
    named = assert_writes_the_planned_files(dry.stdout, configcheck_for(config))
    argv = {}
    for path in named:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    for rule, jobs in commands.items():
        for command in jobs:
            record = f"zigzag() {{ printf '%s\\0' \"$@\" > argv; }}; {command}"
            subprocess.run(["bash", "-c", record], cwd=tmp_path, check=True)
            argv.setdefault(rule, []).append((tmp_path / "argv").read_text().split("\0")[:-1])

    def after(rule, flag):
        return sorted(args[args.index(flag) + 1] for args in argv[rule])[0]

    assert sorted(argv) == ["analyze", "figure_fig_a", "figure_fig_b", "figure_fig_sign", "prepare_dataset",
                            "table_claims", "table_t1", "train"]
    assert after("prepare_dataset", "--data-root") == data_root
    assert after("prepare_dataset", "--out") == f"{results}/data/tiny.h5"
    assert json.loads(after("train", "--settings"))["dataset"] == f"{results}/data/tiny.h5"
    assert after("train", "--gpu-locks") == f"{results}/gpu-locks"
    assert sorted(args[1] for args in argv["analyze"]) == [f"{results}/runs/{job}/trajectory.h5" for job in trained]
    assert after("analyze", "--out") == f"{results}/analysis/cnn_a.h5" and after("figure_fig_a", "--title") == text
    assert after("figure_fig_a", "--png") == f"{results}/figures/fig_a.png"
    assert after("figure_fig_a", "--pdf") == f"{results}/figures/fig_a.pdf"
    assert after("table_t1", "--out") == f"{results}/tables/t1"
    assert after("table_claims", "--out") == f"{results}/tables/claims"
    assert after("figure_fig_sign", "--panel") == f"{results}/analysis/cnn_a.h5"
    assert after("table_t1", "--row") == text and after("table_t1", "--caption") == text
    spec = json.loads(after("table_claims", "--spec"))
    assert [args[0] for jobs in argv.values() for args in jobs].count("train") == len(trained)
    assert spec["groups"]["cnn"][0][0][1:] == [f"{results}/runs/cnn_a/trajectory.h5", f"{results}/analysis/cnn_a.h5"]
    assert not list(tmp_path.rglob("PWNED*")) and not list(ROOT.glob("PWNED*"))


def assert_writes_the_planned_files(dry_run: str, config: dict) -> set[str]:
    """The outputs, logs and benchmarks of every job of a dry run of ``all`` (from nothing) are exactly the files
    ``pipeline.planned_outputs`` lists (less the GPU lock folder, a param): a rule whose path drifts from
    ``zigzag.pipeline`` fails here. Returns them."""
    from zigzag import pipeline

    named = {path for kind, paths in re.findall(r"^    (output|log|benchmark): (.+)$", dry_run, re.M)
             for path in paths.split(", ")}
    assert named == set(pipeline.planned_outputs(config)) - {pipeline.gpu_locks_folder(config)}
    return named


def configcheck_for(config: dict) -> dict:
    """``config`` as the workflow plans it: checked, with its sharpness figures."""
    checked = configcheck.checked_config(copy.deepcopy(config), ROOT / "workflow" / "schemas" / "config.schema.yaml")
    return configcheck.add_sharpness_figures(checked)


@pytest.mark.parametrize("configfile", ["config.yaml", "presets/paper.yaml"])
def test_default_and_paper_configs_dry_run(configfile, tmp_path):
    """Both shipped configs validate and build their whole DAG (the paper preset on its own); the claims'
    extra seeds (1 and 2 of 11 runs) are trained for all_claims only, never for all_figures, nor is the perturbed
    twin of the divergence figure, and the sweep's points for all_sweeps (and all) only."""
    def dry_run(target):
        result = subprocess.run([*SNAKEMAKE, "-n", "--cores", "8", target, "--configfile", configfile,
                                 "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile")],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout, result.stdout.split("Job stats:")[1]

    out, jobs = dry_run("all")
    figures_only = dry_run("all_figures")[1]
    sweeps_only = dry_run("all_sweeps")[1]  # the sweep's points, its phase diagram and table, nothing else
    assert "figure_phase_" not in figures_only and "table_onset_vs_lr" in sweeps_only and "figure_phase_" in jobs
    assert not re.search(r"^(figure_fig|table_claims|table_table1)", sweeps_only, re.M)
    assert_writes_the_planned_files(out, configcheck_for(yaml.safe_load((ROOT / configfile).read_text())))
    if configfile == "presets/paper.yaml":
        assert re.search(r"^train\s+68$", jobs, re.M) and "figure_fig10_gawu " in jobs
        assert re.search(r"^train\s+28$", figures_only, re.M) and re.search(r"^train\s+18$", sweeps_only, re.M)
        assert "results-paper/runs/cnn_cifar10_lr0.1/trajectory.h5" in out
        assert "results-paper/runs/cnn_cifar10_lr0.1-seed2/trajectory.h5" in out
    else:
        assert re.search(r"^train\s+48$", jobs, re.M) and "table_table1_gawu" in jobs
        assert re.search(r"^train\s+17$", figures_only, re.M) and "table_claims" not in figures_only
        assert re.search(r"^train\s+8$", sweeps_only, re.M)
        # the divergence figure and its perturbed twin (one more training job) in all, not in all_figures
        assert "figure_divergence_cnn" in jobs and "figure_divergence_cnn" not in figures_only
        for job in ("cnn_lr0.1", "cnn_lr0.1-seed1", "cnn_lr0.1-seed2", "sgd_gawu-seed2"):
            assert f"results/runs/{job}/trajectory.h5" in out
        assert_planned_order(out, configcheck_for(yaml.safe_load((ROOT / configfile).read_text())))
    assert "table_claims" in jobs


def assert_planned_order(dry_run: str, config: dict):
    """The dry run's jobs take the priorities zigzag.pipeline plans (the quickest figure's training first,
    then longest first; analyses and figures above all training) and each training job one thread of
    train_cpus."""
    from zigzag import pipeline

    blocks = [dict(re.findall(r"^    (\w+): (.*)$", block, re.M), rule=rule)
              for rule, block in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", dry_run, re.M)]
    trains = {b["wildcards"].removeprefix("job="): b for b in blocks if b["rule"] == "train"}
    assert set(trains) == set(pipeline.all_jobs(config))
    for job, block in trains.items():
        assert int(block["priority"]) == pipeline.train_priority(config, job), job
        assert "train_cpus=1" in block["resources"].split(", ") and "threads" not in block, job
    finishing = [b for b in blocks if b["rule"] == "analyze" or b["rule"].startswith("figure_")]
    assert finishing and {int(b["priority"]) for b in finishing} == {pipeline.finishing_priority(config)}


# The conda/container advice is out of scope: the project deploys with pip (README, "How it works").
DEPLOYMENT_LINT = "Specify a conda environment or container for each rule."


@pytest.mark.parametrize("configfile", ["config.yaml", "presets/paper.yaml"])
def test_snakemake_lint_finds_nothing_but_the_deployment_advice(configfile):
    result = subprocess.run([*SNAKEMAKE, "--lint", "--configfile", configfile], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lints = re.findall(r"^ {4}\* (.+?):$", result.stdout + result.stderr, re.M)
    assert lints and set(lints) == {DEPLOYMENT_LINT}, result.stdout + result.stderr


def test_snakefiles_are_formatted():
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_sources_pass_ruff():
    """The package, tests, benchmarks and examples pass ruff with the project's rules (pyproject.toml, [tool.ruff])."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "zigzag", "tests", "benchmarks", "examples"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


