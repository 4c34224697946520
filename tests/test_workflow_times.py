"""benchmarks/workflow_times.py on a fake results folder: job order, seconds and when each figure appeared."""

import datetime
import os
from pathlib import Path

import pytest
from conftest import benchmark_script

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.fixture(scope="module")
def times():
    return benchmark_script("workflow_times")


def fake_results(tmp_path, start: float) -> Path:
    """Two training jobs (the long one started first) and two figures, times counted from ``start``."""
    results = tmp_path / "results"
    (results / "benchmarks" / "train").mkdir(parents=True)
    (results / "figures").mkdir()
    for job, began, wall, cpu in [("short", 12.0, 30.0, 29.5), ("long", 10.0, 400.0, 390.2)]:
        tsv = results / "benchmarks" / "train" / f"{job}.tsv"
        tsv.write_text(HEADER + f"{wall}\t0:00:00\t1\t1\t1\t1\t0\t0\t98.0\t{cpu}\n")
        os.utime(tsv, (start + began + wall,) * 2)
    for fid, written in [("fig9", 60.0), ("fig3", 415.0)]:
        png = results / "figures" / f"{fid}.png"
        png.write_bytes(b"")
        os.utime(png, (start + written,) * 2)
    return results


def test_times_count_from_snakemakes_log_and_list_jobs_by_start(times, tmp_path):
    start = datetime.datetime(2026, 11, 30, 17, 0, 0, 250000)
    results = fake_results(tmp_path, start.timestamp())
    logs = tmp_path / ".snakemake" / "log"
    logs.mkdir(parents=True)
    for stamp in (start, start - datetime.timedelta(hours=1), start + datetime.timedelta(seconds=500)):
        (logs / (stamp.isoformat().replace(":", "") + ".snakemake.log")).write_text("")
    lines = times.report(results).splitlines()
    assert lines[0] == "Times from Snakemake's start."
    assert "| 1 | long | 10 | 400 | 390 |" in lines and "| 2 | short | 12 | 30 | 30 |" in lines
    assert lines.index("| 1 | long | 10 | 400 | 390 |") < lines.index("| 2 | short | 12 | 30 | 30 |")
    assert "Training: 420 CPU s in 2 jobs; last job ended at 410 s." in lines
    assert lines[-2:] == ["| fig9 | 60 |", "| fig3 | 415 |"]


def test_without_a_snakemake_log_times_count_from_the_first_job(times, tmp_path):
    results = fake_results(tmp_path, 1_700_000_000.0)
    lines = times.report(results).splitlines()
    assert lines[0] == "Times from the first training job's start."
    assert "| 1 | long | 0 | 400 | 390 |" in lines and lines[-2:] == ["| fig9 | 50 |", "| fig3 | 405 |"]


def test_no_benchmarks_is_one_line(times, tmp_path):
    with pytest.raises(SystemExit, match="no training benchmarks in"):
        times.report(tmp_path)
