"""What a run costs, from its settings: the work of one seed in counts (``run_work``: the training images its
steps take gradients of, its test evaluations, its sharpness solves), from which the workflow orders its jobs
(``pipeline.job_cost``) and ``preset_hours`` turns a device's per-epoch timings into the hours of a whole
workflow config (``benchmarks/bench_step.py --cases paper``).

Importing it imports neither torch nor h5py (the workflow plans with it); ``preset_hours`` reads the run settings
(``RunConfig``) and the Lanczos constants (``zigzag.sharpness``) when it is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from zigzag.settings import parse_step_selection

EPOCH = 50_000  # the timings ``preset_hours`` takes are seconds per 50,000 images


@dataclass(frozen=True)
class RunWork:
    """The work of one run on one seed, in counts."""

    steps: int  # updates: GD steps, or SGD epochs x the whole batches of an epoch
    images: int  # training images the steps take gradients of
    evaluations: int  # test evaluations: step 0, every eval_every-th step and the last
    solves: int  # sharpness solves on the grid of ``sharpness.every`` (the refined ones near 2/lr left out)
    subset: int  # training images a solve's Hessian is taken on


def run_work(run: Mapping, n_train: int) -> RunWork:
    """The work of ``run`` (a run's settings with their defaults: ``RunConfig.to_dict()`` or a checked config's
    ``runs`` entry) on a training set of ``n_train`` images."""
    if run["optimizer"] == "sgd":
        steps, per_step = run["epochs"] * (n_train // run["batch_size"]), run["batch_size"]
    else:
        steps, per_step = run["steps"], n_train
    every = run["eval_every"]
    evaluations = -(-steps // every) + ((steps - 1) % every != 0)
    selection = parse_step_selection(run["sharpness"].get("every"), steps, "sharpness.every")
    if selection is None:
        solves = 0
    else:
        solves = len(range(0, steps, selection)) if isinstance(selection, int) else len(selection)
    return RunWork(steps, steps * per_step, evaluations, solves, run["sharpness"].get("subset") or n_train)


def train_images(config: dict, dataset: str) -> int:
    """The training images of a dataset of a workflow config: its subset, else its source's training split (of a
    ``from`` source, counted there)."""
    from zigzag.data import SOURCES  # the file formats' module: imported only when a size is needed
    from zigzag.userdata import train_count

    spec = config["datasets"][dataset]
    if spec.get("train_size"):
        return spec["train_size"]
    return train_count(spec["from"]) if "from" in spec else SOURCES[spec["source"]].train_images


def timing_key(run) -> tuple[str, bool, int]:
    """What the seconds of a gradient pass depend on besides the images: (model, batch_norm, micro_batch) of a
    ``RunConfig``."""
    return run.model, run.batch_norm, run.micro_batch


def preset_runs(preset: dict) -> dict[str, tuple]:
    """Each run of a workflow config that trains, its sweeps' runs included (``zigzag.sweeps.expand``), as (its
    ``RunConfig``, defaults filled in; its number of seeds)."""
    from zigzag.runconfig import RunConfig
    from zigzag.sweeps import expand

    declared = dict(preset["runs"])
    for name, sweep in preset.get("sweeps", {}).items():
        declared.update(expand(name, sweep, preset["runs"]))
    runs = {}
    for name, run in declared.items():
        if "trajectory" in run:  # recorded by a loop of one's own: nothing to train
            continue
        config = RunConfig.from_dict({key: value for key, value in run.items() if key != "seeds"})
        runs[name] = config, len(run.get("seeds", [config.seed]))
    return runs


def preset_hours(preset: dict, timings: dict[tuple, dict]) -> list[dict]:
    """Seconds of every run of a workflow config (all its seeds) on a device, from per-epoch timings of its models;
    a sweep's run has its sweep's name as ``sweep`` (None for the others).

    ``timings[timing_key(run)]`` holds seconds per 50,000 images of a training step (``epoch_s``), of a test
    forward pass (``forward_s``) and of one Hessian-vector product (``hvp_s``). A seed costs ``run_work``'s
    images x epoch_s, its evaluations x the test split x forward_s and, with sharpness, one cold solve of
    ``NCV_COLD`` + 1 products and warm ones of ``NCV_WARM`` + 1 (a full Lanczos basis and the first product
    after its restart: 21 and 9, about what the default runs take, BENCHMARKS.md) x the subset x hvp_s. The
    timings are taken as those of every dataset's images.
    """
    from zigzag.data import SOURCES
    from zigzag.runchoices import NCV_COLD, NCV_WARM

    rows = []
    for name, (run, seeds) in preset_runs(preset).items():
        t = timings[timing_key(run)]
        source = preset["datasets"][run.dataset]["source"]
        work = run_work(run.to_dict(), train_images(preset, run.dataset))
        tested = work.evaluations * SOURCES[source].test_images
        seconds = (work.images * t["epoch_s"] + tested * t["forward_s"]) / EPOCH
        if work.solves:
            hvps = NCV_COLD + 1 + (work.solves - 1) * (NCV_WARM + 1)
            seconds += hvps * work.subset / EPOCH * t["hvp_s"]
        sweep = next((s for s in preset.get("sweeps", {}) if name.startswith(f"{s}-")), None)
        rows.append({"run": name, "seeds": seeds, "steps": work.steps, "seconds": seeds * seconds, "sweep": sweep})
    return rows
