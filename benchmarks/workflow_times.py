"""When a workflow run trained what and when each figure appeared, from the files it left behind.

Per training job, in the order the jobs started: its start and wall seconds and its CPU seconds (the columns
``s`` and ``cpu_time`` of ``<results>/benchmarks/train/<job>.tsv``, which Snakemake writes when the job ends,
so a job started at that file's time less its wall seconds); then each figure (``<results>/figures/*.png``)
with the time it appeared. Times count from Snakemake's start: the newest ``.snakemake/log/<start>.snakemake.log``
beside ``results`` that began before the first job, else the first job's start. Prints a Markdown table.

    .venv/bin/python benchmarks/workflow_times.py results
"""

import argparse
import csv
import datetime
from pathlib import Path

LOG_SUFFIX = ".snakemake.log"


def training_jobs(results: Path) -> list[dict]:
    """Every benchmarked training job: name, start (epoch seconds), wall and CPU seconds, by start."""
    jobs = []
    for tsv in (results / "benchmarks" / "train").glob("*.tsv"):
        with tsv.open(newline="") as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        wall = float(row["s"])
        jobs.append({"job": tsv.stem, "start": tsv.stat().st_mtime - wall, "wall": wall,
                     "cpu": float(row["cpu_time"])})
    return sorted(jobs, key=lambda job: job["start"])


def figures(results: Path) -> list[dict]:
    """Every figure: id and the time its PNG was written (epoch seconds), by time."""
    return sorted(({"figure": png.stem, "written": png.stat().st_mtime} for png in (results / "figures").glob("*.png")),
                  key=lambda fig: fig["written"])


def snakemake_start(results: Path, first_job: float) -> float | None:
    """The start of the newest Snakemake run beside ``results`` that began by ``first_job`` (from its log's
    name, local time), or None without one."""
    starts = []
    for log in (results.parent / ".snakemake" / "log").glob("*" + LOG_SUFFIX):
        try:
            stamp = datetime.datetime.strptime(log.name.removesuffix(LOG_SUFFIX), "%Y-%m-%dT%H%M%S.%f")
        except ValueError:
            continue
        starts.append(stamp.timestamp())
    return max((s for s in starts if s <= first_job), default=None)


def report(results: Path) -> str:
    """The Markdown table of training jobs and figures, times in seconds from the start."""
    jobs, figs = training_jobs(results), figures(results)
    if not jobs:
        raise SystemExit(f"no training benchmarks in {results / 'benchmarks' / 'train'}")
    logged = snakemake_start(results, jobs[0]["start"])
    start = jobs[0]["start"] if logged is None else logged
    lines = [f"Times from {'Snakemake' if logged is not None else 'the first training job'}'s start.", "",
             "| # | training job | start s | wall s | CPU s |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {job['job']} | {job['start'] - start:.0f} | {job['wall']:.0f} | {job['cpu']:.0f} |"
              for n, job in enumerate(jobs, 1)]
    lines += ["", f"Training: {sum(job['cpu'] for job in jobs):.0f} CPU s in {len(jobs)} jobs; last job ended at "
              f"{max(job['start'] + job['wall'] for job in jobs) - start:.0f} s.", "",
              "| figure | appeared at s |", "|---|---|"]
    lines += [f"| {fig['figure']} | {fig['written'] - start:.0f} |" for fig in figs]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the workflow's results folder (config key results)")
    print(report(parser.parse_args(argv).results))


if __name__ == "__main__":
    main()
