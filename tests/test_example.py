"""The worked example of README's "Your own network and data" (``examples/``) end to end: the section's commands,
as README writes them, on a copy of the repository, and what the section says comes out."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from conftest import built_once

from zigzag import store

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "results/example"  # examples/config.yaml's `results`
PROGRAMS = {".venv/bin/python": [sys.executable], ".venv/bin/snakemake": [sys.executable, "-m", "snakemake"]}
pytestmark = pytest.mark.workflow


def section() -> str:
    """README's section "Your own network and data", up to the next section."""
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Your own network and data\n", 1)[1].split("\n## ", 1)[0]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.S)


def commands() -> list[list[str]]:
    """The section's shell commands, with this interpreter for the install's ``.venv/bin`` programs."""
    (shell,) = blocks("bash")
    lines = [shlex.split(line) for line in shell.splitlines() if line.strip()]
    assert [line[0] for line in lines] == [".venv/bin/python", ".venv/bin/python", ".venv/bin/snakemake"]
    return [PROGRAMS[program] + args for program, *args in lines]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """A copy of the repository's workflow, package and ``examples/`` (without the files the example writes) in
    which the section's commands ran from the top, as from a fresh clone; built once per session, also under
    pytest-xdist (conftest.py, ``built_once``). Returns the copy."""
    def build(work):
        shutil.copy(ROOT / "Snakefile", work)
        leftovers = shutil.ignore_patterns("__pycache__", "*.npz", "*.h5")
        for folder in ("workflow", "zigzag", "examples"):
            shutil.copytree(ROOT / folder, work / folder, ignore=leftovers)
        env = {**os.environ, "PYTHONPATH": str(work)}  # the copied package, as test_workflow runs it
        for command in commands():
            result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
            assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout}\n{result.stderr}"
        # Then the user edits the model file and the loop's file, and then the data: what would the workflow rerun?
        later = max(path.stat().st_mtime for path in (work / RESULTS).rglob("*")) + 10
        for edited, names in EDITS.items():
            for name in names:
                with open(work / "examples" / name, "ab") as f:
                    f.write(b"\n# edited\n")
                os.utime(work / "examples" / name, (later, later))
            result = subprocess.run(commands()[-1] + ["-n"], cwd=work, env=env, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            (work / edited).write_text(result.stdout)

    return built_once(tmp_path_factory, "example", build)


# After the run (``example``) the files of examples/ edited in turn, each followed by a dry run saved as the key.
# The data second: Snakemake gives one reason per job, and a new dataset would hide the model file's.
EDITS = {"model_and_loop.txt": ("mlp.py", "my_loop.h5"), "data.txt": ("blobs.npz",)}


def planned(dry_run: str) -> dict[tuple[str, str], str]:
    """(rule, wildcard value) -> the ``reason`` of each job of a dry run's output."""
    jobs = {}
    for block in dry_run.split("\nrule ")[1:]:
        wildcard = re.search(r"^    wildcards: \w+=(\S+)$", block, re.M)
        reason = re.search(r"^    reason: (.*)$", block, re.M)
        jobs[block.split(":", 1)[0], wildcard and wildcard.group(1)] = reason and reason.group(1)
    return jobs


def test_the_readme_shows_the_example_files_as_they_are():
    """The model listed in the section is examples/mlp.py's, and each line of its config is one of
    examples/config.yaml's."""
    (model,) = blocks("python")
    assert model in (ROOT / "examples" / "mlp.py").read_text()
    (config,) = blocks("yaml")
    lines = (ROOT / "examples" / "config.yaml").read_text().splitlines()
    assert [line for line in config.splitlines() if line not in lines] == []


def test_the_readme_commands_draw_every_figure(example):
    for figure in ("mlp_ce", "mlp_mse", "my_loop", "sharpness_mlp_mse"):
        for ext in ("png", "pdf"):
            assert (example / RESULTS / "figures" / f"{figure}.{ext}").stat().st_size > 1000


def test_the_loop_is_analysed_over_the_steps_it_recorded_and_never_trained(example):
    with h5py.File(example / "examples" / "my_loop.h5", "r") as f:
        recorded = int(f.attrs["total_steps"])
        assert f["steps/loss"].shape == (recorded,) and recorded == 100
    analysis = store.read_analysis(example / RESULTS / "analysis" / "my_loop.h5")
    assert analysis.mean_mu.shape == (recorded,)
    assert not (example / RESULTS / "runs" / "my_loop").exists()


def test_the_example_shows_what_the_readme_says(example):
    """The GD runs zigzag, the MSE run after its sharpness reached 2/lr; the Adam loop has no zigzag phase."""
    ce, mse, loop = (store.read_analysis(example / RESULTS / "analysis" / f"{run}.h5")
                     for run in ("mlp_ce", "mlp_mse", "my_loop"))
    assert ce.zigzag_onset is not None and mse.zigzag_onset is not None and loop.zigzag_onset is None
    assert mse.eos_step is not None and mse.eos_step < mse.zigzag_onset


def test_an_edited_model_data_or_loop_file_reruns_exactly_what_reads_it(example):
    """After the run, the model file and the loop's trajectory are edited, then the ``.npz`` (``example``): the
    model file (an input of the training job, found without importing it) retrains both runs, the loop's file
    re-analyses the loop, never training it, and the ``.npz`` prepares the dataset again."""
    jobs = planned((example / "model_and_loop.txt").read_text())
    assert "prepare_dataset" not in {rule for rule, _ in jobs} and ("train", "my_loop") not in jobs
    for run in ("mlp_ce", "mlp_mse"):
        assert re.fullmatch(r"Updated input files: \S*examples/mlp\.py", jobs["train", run])
    assert re.fullmatch(r"Updated input files: \S*examples/my_loop\.h5", jobs["analyze", "my_loop"])
    jobs = planned((example / "data.txt").read_text())
    assert re.fullmatch(r"Updated input files: \S*examples/blobs\.npz", jobs["prepare_dataset", "blobs"])
    assert ("train", "mlp_ce") in jobs and ("train", "my_loop") not in jobs
