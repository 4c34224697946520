"""The workflow's plan: job names, rule inputs and every rule's arguments, from a checked config.

``zigzag/configcheck.py`` checks the config first. The functions below turn it into plain-typed rule
inputs and params (dicts as sorted JSON, commands as strings), so that a changed setting re-runs exactly
the stages that depend on it; the rules in ``workflow/rules/`` only call them. Every path pattern of the
results is written once, in the file functions below: the rules take their outputs, logs and benchmarks from
them and their commands name those outputs through Snakemake's ``{output}``; ``planned_outputs`` lists every
file the rules write (``configcheck`` keeps them inside ``results``; a test checks a dry run plans exactly
these). A config is data, never code: every command is built with ``shlex.join`` and the rules quote every
path and value they add (``{output:q}``), so a shell takes each string of the config literally. A job is one
run on one seed (``run_jobs``); figures are planned from their kind's declaration (``zigzag/figurekinds.py``).
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from zigzag.analysisconfig import AnalysisConfig
from zigzag.estimate import run_work, train_images
from zigzag.figurekinds import kind_of, labelled_runs, references
from zigzag.modelimport import factory_file, is_custom
from zigzag.settings import PROCESSES


def claim_groups(config: dict) -> dict[str, list[str]]:
    """Claim group -> the runs it reads, for the groups the config names (``zigzag.claims.GROUPS``)."""
    from zigzag.claims import GROUPS  # imported here: importing the plan stays light

    return {group: names for group, names in config["claims"].items() if group in GROUPS}


def claim_seed_jobs(config: dict, run: str) -> list[str]:
    """The jobs of ``run`` that the claims read: one per seed of ``claims.seeds``, in that order."""
    return [job_name(config, run, seed) for seed in config["claims"]["seeds"]]


def claims_spec(config: dict) -> str:
    """What ``zigzag table claims --spec`` takes: thresholds, seeds, the overall rule and, per claim
    group, every run's jobs (one per claims seed) with their files."""
    claims = config["claims"]
    groups = {group: [[[job, trajectory_file(config, job), analysis_file(config, job)]
                       for job in claim_seed_jobs(config, run)] for run in names]
              for group, names in claim_groups(config).items()}
    return json.dumps({"thresholds": claims["thresholds"], "seeds": claims["seeds"], "overall": claims["overall"],
                       "groups": groups}, sort_keys=True)


def claims_jobs(config: dict) -> list[str]:
    """Every job the claims read, each once."""
    return list(dict.fromkeys(job for names in claim_groups(config).values() for run in names
                              for job in claim_seed_jobs(config, run)))


def entry_references(section: str, where: str, spec: dict):
    """(config path, run, window step or "auto" or None) for every run a figure or table entry reads."""
    if section == "figures":
        yield from references(f"figures.{where}", spec)
    else:
        for i, item in enumerate(spec.get("rows", [])):
            yield f"tables.{where}.rows.{i}", item["run"], None


def sweep_runs(config: dict, sweep: str) -> list[str]:
    """The runs of a sweep, in grid order: the record ``configcheck.checked_config`` writes when it expands it."""
    return config["sweeps"][sweep]["runs"]


def of_sweep(spec: dict) -> bool:
    """A figure or table of a sweep (a target of ``all_sweeps``, not of ``all_figures`` or ``all_tables``)."""
    return "sweep" in spec


def entries(config: dict, section: str, sweeps: bool) -> list[str]:
    """The ids of the figures or tables of sweeps (``sweeps``), or of the others."""
    return [eid for eid, spec in config[section].items() if of_sweep(spec) == sweeps]


# ---------------------------------------------------------------------------------------------
# Jobs: one training job per (run, seed), named by ``job_name``.


def seeds(run: dict) -> list[int]:
    return list(run.get("seeds", [run["seed"]]))


def job_name(config: dict, run: str, seed: int) -> str:
    """The job of ``run`` on ``seed``: the run's name for its own single seed, else ``<run>-seed<s>``."""
    spec = config["runs"][run]
    return run if "seeds" not in spec and seed == spec["seed"] else f"{run}-seed{seed}"


def run_jobs(config: dict, run: str) -> list[str]:
    """Job names of a run (what its figures and tables read): the run's name, or ``<run>-seed<s>`` for
    each of several seeds."""
    return [job_name(config, run, s) for s in seeds(config["runs"][run])]


def all_jobs(config: dict) -> dict[str, tuple[str, int]]:
    """Every job name -> (run, seed): each run's own seeds, and the seeds of ``claims.seeds`` for the
    runs the claims read."""
    jobs = {job_name(config, run, seed): (run, seed)
            for run in config["runs"] for seed in seeds(config["runs"][run])}
    for names in claim_groups(config).values():
        for run in names:
            jobs.update({job_name(config, run, seed): (run, seed) for seed in config["claims"]["seeds"]})
    return jobs


def recorded_files(config: dict) -> dict[str, str]:
    """Job -> the file of a trajectory run (``configcheck.recorded_run``): its analysis input, never trained."""
    return {job_name(config, run, seed): path for run, spec in config["runs"].items() if "trajectory" in spec
            for seed, path in zip(seeds(spec), spec["trajectory"], strict=True)}


def trained_jobs(config: dict) -> list[str]:
    """The jobs of the training rule: every job but those of trajectory runs."""
    recorded = recorded_files(config)
    return [job for job in all_jobs(config) if job not in recorded]


def single_seed_settings(run: dict, seed: int, dataset_path: str) -> dict:
    settings = {key: value for key, value in run.items() if key not in ("seeds", "processes")}
    settings.update(seed=seed, dataset=dataset_path)
    if settings["schedule"].get("kind") == "constant":
        settings["schedule"] = {}
    return settings


def run_settings(config: dict, job: str, dataset_path: str) -> str:
    """One job's training settings as sorted JSON (what ``zigzag train --settings`` takes)."""
    run, seed = all_jobs(config)[job]
    return json.dumps(single_seed_settings(config["runs"][run], seed, dataset_path), sort_keys=True)


def run_of(config: dict, job: str) -> str:
    return all_jobs(config)[job][0]


def figure_jobs(config: dict, spec: dict) -> list[str]:
    """The jobs a figure reads: the first or every seed of each run it names (its kind says which)."""
    first_only = kind_of(spec).seeds == "first"
    runs = sweep_runs(config, spec["sweep"]) if of_sweep(spec) else sorted({run for _, run, _ in references("", spec)})
    return [name for run in runs for name in run_jobs(config, run)[: 1 if first_only else None]]


def table_jobs(config: dict, spec: dict) -> list[str]:
    """The jobs a table reads: every seed of each of its rows' runs, or of its sweep's runs."""
    runs = sweep_runs(config, spec["sweep"]) if of_sweep(spec) else sorted({item["run"] for item in spec["rows"]})
    return [name for run in runs for name in run_jobs(config, run)]


def table_inputs(config: dict, spec: dict) -> list[str]:
    """The files a table reads: each job's trajectory, and for a sweep's table its analysis too."""
    return [path for job in table_jobs(config, spec) for path in
            ([trajectory_file(config, job)] + [analysis_file(config, job)] * of_sweep(spec))]


def run_windows(config: dict, job: str) -> list[int | str]:
    """Every window step any figure draws from this job, "auto" first when one lets the analysis find them
    (the analysis keeps exactly these matrices)."""
    run = run_of(config, job)
    if job != run_jobs(config, run)[0]:
        return []
    wanted = {step for fid, fig in config["figures"].items()
              for _, r, step in references(fid, fig) if r == run and step is not None}
    return ["auto"] * ("auto" in wanted) + sorted(wanted - {"auto"})


def dataset_args(config: dict, name: str) -> str:
    """``zigzag prepare`` arguments for dataset ``name`` (a plain string: compared by Snakemake)."""
    spec = config["datasets"][name]
    args = ["--from", spec["from"]] if "from" in spec else ["--dataset", spec["source"]]
    args += ["--seed", str(spec["seed"])]
    if spec["data_root"]:
        args += ["--data-root", spec["data_root"]]
    if spec["download"]:
        args.append("--download")
    if spec["train_size"]:
        args += ["--train-size", str(spec["train_size"])]
    return shlex.join(args)


def dataset_inputs(config: dict, name: str) -> list[str]:
    """The files a dataset is prepared from, as the prepare job's inputs: a ``from`` file, or every file under a
    ``from`` folder (listed, not read, at planning time); none for a built-in source."""
    from zigzag.userdata import source_files

    spec = config["datasets"][name]
    return source_files(spec["from"]) if "from" in spec else []


def analysis_args(config: dict, job: str) -> str:
    """``zigzag analyze`` flags of a job: the config's analysis settings and the windows its figures draw."""
    windows = ",".join(map(str, run_windows(config, job))) or "none"
    return AnalysisConfig(**config["analysis"], windows=windows).args()


def run_processes(config: dict, job: str) -> int:
    """The processes a job's run is split across (its ``processes``, ``settings.PROCESSES``)."""
    return config["runs"][run_of(config, job)].get("processes", PROCESSES.default)


def train_launcher(config: dict, job: str) -> str:
    """The command that starts a job's ``train``: ``zigzag`` (the workflow's shell function), or torchrun with
    one process per ``processes`` on this node."""
    processes = run_processes(config, job)
    if processes == 1:
        return "zigzag"
    return f"{shlex.quote(sys.executable)} -m torch.distributed.run --standalone --nproc-per-node {processes} -m zigzag"


def uses_gpu(config: dict, job: str) -> int:
    """1 when the job trains on CUDA (device cuda, or auto on a machine that has nvidia-smi)."""
    import shutil

    device = config["runs"][run_of(config, job)]["device"]
    return int(device == "cuda" or (device == "auto" and shutil.which("nvidia-smi") is not None))


# ---------------------------------------------------------------------------------------------
# Files and the figure and table rules' commands.


def data_file(config: dict, dataset: str) -> str:
    return f"{config['results']}/data/{dataset}.h5"


def dataset_file(config: dict, job: str) -> str:
    """The dataset cache a job trains on."""
    return data_file(config, config["runs"][run_of(config, job)]["dataset"])


def model_files(config: dict, job: str) -> list[str]:
    """The file that defines a ``package.module:factory`` model's module (none for a built-in model), found from
    the workflow's directory (where Snakemake runs) or ``PYTHONPATH`` without importing it: only that file
    counts, not what it imports. ``configcheck`` has made sure it is found."""
    model = config["runs"][run_of(config, job)]["model"]
    if not is_custom(model):
        return []
    path = factory_file(model, (os.getcwd(),))
    return [os.path.relpath(path) if path.is_relative_to(os.getcwd()) else str(path)]


def trajectory_file(config: dict, job: str) -> str:
    """A job's trajectory: what it trains, or the file of a trajectory run."""
    return recorded_files(config).get(job) or f"{config['results']}/runs/{job}/trajectory.h5"


def analysis_file(config: dict, job: str) -> str:
    return f"{config['results']}/analysis/{job}.h5"


FILES = {"trajectory": trajectory_file, "analysis": analysis_file}  # what a figure kind reads -> its file


def figure_inputs(config: dict, spec: dict) -> dict[str, list[str]]:
    """The files a figure reads (named inputs ``trajectory``, ``analysis``): those its kind reads, of each job."""
    jobs = figure_jobs(config, spec)
    return {name: [FILES[name](config, job) for job in jobs] for name in kind_of(spec).reads}


FIGURE_EXTS = ("png", "pdf")  # the files of one figure (``zigzag figure --png --pdf``)
TABLE_EXTS = ("csv", "md", "tex")  # the files of one table (``zigzag table --out PREFIX`` writes PREFIX.<ext>)


def figure_file(config: dict, fid: str, ext: str) -> str:
    return f"{config['results']}/figures/{fid}.{ext}"


def figure_files(config: dict, front_door: bool = False) -> list[str]:
    """Every figure's files (the target ``all``), or with ``front_door`` those of the kinds ``all_figures``
    draws (``FigureKind.front_door``)."""
    return [figure_file(config, fid, ext) for fid, spec in config["figures"].items()
            if kind_of(spec).front_door or not front_door for ext in FIGURE_EXTS]


def table_file(config: dict, tid: str, ext: str) -> str:
    return f"{config['results']}/tables/{tid}.{ext}"


def table_prefix(csv: str) -> str:
    """What ``zigzag table --out`` takes, from the table's CSV output: its path without ``.csv``."""
    return csv.removesuffix(".csv")


def log_file(config: dict, stage: str, name: str) -> str:
    """The log of one job of a stage (prepare_dataset, train, analyze, figures, tables)."""
    return f"{config['results']}/logs/{stage}/{name}.log"


def benchmark_file(config: dict, job: str) -> str:
    return f"{config['results']}/benchmarks/train/{job}.tsv"


def gpu_locks_folder(config: dict) -> str:
    return f"{config['results']}/gpu-locks"


def planned_outputs(config: dict) -> list[str]:
    """Every file and folder the rules write, for the config as the workflow runs it (with its sharpness
    figures): what ``configcheck`` keeps inside ``results``."""
    paths = [gpu_locks_folder(config)]
    for name in config["datasets"]:
        paths += [data_file(config, name), log_file(config, "prepare_dataset", name)]
    for job in trained_jobs(config):
        paths += [trajectory_file(config, job), log_file(config, "train", job), benchmark_file(config, job)]
    for job in all_jobs(config):
        paths += [analysis_file(config, job), log_file(config, "analyze", job)]
    for fid in config["figures"]:
        paths += [figure_file(config, fid, ext) for ext in FIGURE_EXTS] + [log_file(config, "figures", fid)]
    for tid in [*config["tables"], "claims"]:
        paths += [table_file(config, tid, ext) for ext in TABLE_EXTS] + [log_file(config, "tables", tid)]
    return paths


def figure_command(config: dict, spec: dict) -> str:
    """The ``zigzag figure`` arguments of one figure but its outputs (``--png``, ``--pdf``: the rule's
    ``{output}``); a plain string: a change re-runs the rule."""
    kind = kind_of(spec)

    def files(job: str) -> list[str]:
        return [FILES[name](config, job) for name in kind.reads]

    args = [kind.command]
    if kind.seeds == "first" and kind.runs == "run":
        first = run_jobs(config, spec["run"])[0]
        for name in kind.reads:
            args += [f"--{name}", FILES[name](config, first)]
    elif kind.runs == "panels":
        for panel in spec["panels"]:
            args += ["--panel", *files(run_jobs(config, panel["run"])[0]), panel["label"],
                     str(panel.get("step", "auto"))]
    else:
        items = ([{"run": run, "label": run} for run in sweep_runs(config, spec["sweep"])] if of_sweep(spec)
                 else labelled_runs(spec))
        for item in items:
            args += ["--curve", item["label"], *(f for job in run_jobs(config, item["run"]) for f in files(job))]
    args += ["--title", spec["title"]]
    if kind.windows:
        steps = spec.get("steps", "auto")
        args += ["--steps", steps if steps == "auto" else ",".join(map(str, steps))]
    return shlex.join(args)


def table_command(config: dict, spec: dict) -> str:
    """The ``zigzag table`` arguments of one table but its output prefix (``--out``, from the rule's
    ``{output}``): a row per label with one trajectory per seed, or for a sweep's table a ``--point`` per run
    with the (trajectory, analysis) files of each seed."""
    args = [spec["kind"].replace("_", "-")]
    for run in sweep_runs(config, spec["sweep"]) if of_sweep(spec) else []:
        args += ["--point", run, *(path for job in run_jobs(config, run)
                                   for path in (trajectory_file(config, job), analysis_file(config, job)))]
    for item in spec.get("rows", []):
        args += ["--row", item["label"], *(trajectory_file(config, job) for job in run_jobs(config, item["run"]))]
    return shlex.join([*args, "--caption", spec["caption"]])


# ---------------------------------------------------------------------------------------------
# Job costs and the order jobs start in (docs/design.md, "Cores and the order of jobs").

# Forward multiply-adds (millions) of one 32 x 32 one-channel image through each model at width 1, counted by
# torch's flop counter (tests/test_pipeline.py recounts them); width w costs about w**2 of it.
MODEL_MMACS = {"cnn": 9.75, "vgg16": 312.0, "resnet18": 554.2, "resnet34": 1158.2}
# A package.module:factory model's cost is not known before it is built (width does not scale it): taken as the cnn's.
CUSTOM_MMACS = MODEL_MMACS["cnn"]
GRADIENT_FORWARDS = 3  # a gradient (forward and backward) costs about three forward passes
HVP_GRADIENTS = 4.5  # gradient passes per Hessian-vector product (measured: 4.6 with BatchNorm, 2.3 without)
HVPS_PER_SOLVE = 10  # Hessian-vector products of a typical warm-started sharpness solve


def job_cost(config: dict, job: str) -> float:
    """A training job's expected cost, in 10^9 multiply-adds, from its settings: the images its steps take
    gradients of, plus its sharpness solves' Hessian-vector products, times the model's cost per image
    (``estimate.run_work``). Evaluations (a forward pass of the test set every ``eval_every`` steps) are left out."""
    run = config["runs"][run_of(config, job)]
    if "trajectory" in run:  # recorded, not trained
        return 0.0
    work = run_work(run, train_images(config, run["dataset"]))
    gradients = work.images + work.solves * HVPS_PER_SOLVE * HVP_GRADIENTS * work.subset
    mmacs = MODEL_MMACS[run["model"]] * run["width"] ** 2 if run["model"] in MODEL_MMACS else CUSTOM_MMACS
    return gradients * GRADIENT_FORWARDS * mmacs / 1e3


def quickest_figure(config: dict) -> str:
    """The figure whose jobs cost least to train (the first in the config among equals)."""
    return min(config["figures"],
               key=lambda fid: sum(job_cost(config, job) for job in figure_jobs(config, config["figures"][fid])))


def train_priorities(config: dict) -> dict[str, int]:
    """Job -> its training job's Snakemake priority (higher starts first among ready jobs): the quickest
    figure's jobs first, then the others longest first, so that at the end only short jobs remain to share
    the cores; ``finishing_priority`` is above them all."""
    first = set(figure_jobs(config, config["figures"][quickest_figure(config)]))
    by_cost = sorted(all_jobs(config), key=lambda job: (job not in first, -job_cost(config, job), job))
    return {job: len(by_cost) - rank for rank, job in enumerate(by_cost)}


def train_priority(config: dict, job: str) -> int:
    return train_priorities(config)[job]


def finishing_priority(config: dict) -> int:
    """The priority of analyses and figures: above every training job, so a finished run becomes its figures
    before the next training job takes the core (they take seconds)."""
    return len(all_jobs(config)) + 1


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
