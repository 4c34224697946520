"""A trajectory a loop of one's own recorded, as a run of the workflow: checked, analysed and drawn, never trained."""

from pathlib import Path

import pytest
import torch
import yaml

from zigzag import configcheck, pipeline
from zigzag.errors import ZigzagError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A config folder holding ``runs/mine.h5``: 8 steps of a tiny loop at lags 3, seed 5."""
    from zigzag import Recorder

    root = tmp_path_factory.mktemp("recorded")
    (root / "runs").mkdir()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(root / "runs" / "mine.h5", model, lags=3, settings={"seed": 5, "lr": 0.1}) as recorder:
        for _ in range(8):
            optimizer.zero_grad()
            loss = model(torch.randn(6, 4)).square().mean()
            loss.backward()
            recorder.record(loss=loss.item(), lr=0.1)
            optimizer.step()
    return root


def config_with(runs: dict, figures: dict | None = None) -> dict:
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    config["runs"].update(runs)
    config["figures"].update(figures or {})
    return config


def test_a_trajectory_run_is_what_its_file_recorded_and_has_no_training_job(folder):
    config = configcheck.checked_config(config_with({"mine": {"trajectory": "runs/mine.h5"}}), SCHEMA, folder)
    mine = config["runs"]["mine"]
    assert mine["seed"] == 5 and mine["lags"] == 3 and mine["steps"] == 8 and "seeds" not in mine
    assert pipeline.trajectory_file(config, "mine") == str(folder / "runs" / "mine.h5")
    assert "mine" in pipeline.all_jobs(config) and "mine" not in pipeline.trained_jobs(config)
    planned = pipeline.planned_outputs(config)
    assert pipeline.analysis_file(config, "mine") in planned and "results/runs/mine/trajectory.h5" not in planned


@pytest.mark.parametrize("run, figures, message", [
    ({"trajectory": "runs/none.h5"}, None, r"runs.mine.trajectory: .*none.h5: no such file"),
    ({"trajectory": "runs/mine.h5", "lr": 0.1}, None, r"runs.mine: a trajectory run is not trained.*remove lr"),
    ({"trajectory": ["runs/mine.h5", "runs/mine.h5"]}, None, r"a list of distinct files"),
    ({"trajectory": "runs/mine.h5"}, {"layers_mine": {"kind": "layers", "run": "mine", "title": "t"}},
     r"figures.layers_mine.run: kind layers reads what per_layer records, but the files of runs.mine lack it"),
])
def test_a_bad_trajectory_run_is_one_line(folder, run, figures, message):
    with pytest.raises(ZigzagError, match=message):
        configcheck.checked_config(config_with({"mine": run}, figures), SCHEMA, folder)


def test_a_file_that_is_no_trajectory_is_refused(folder):
    (folder / "runs" / "notes.h5").write_bytes(b"not hdf5")
    with pytest.raises(ZigzagError, match=r"runs.mine.trajectory: .*notes.h5: not a readable HDF5 file"):
        configcheck.checked_config(config_with({"mine": {"trajectory": "runs/notes.h5"}}), SCHEMA, folder)
