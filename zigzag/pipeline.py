"""The workflow's plan: job names, rule inputs and every rule's arguments, from a checked config.

``zigzag/configcheck.py`` checks the config first. The functions below turn it into plain-typed rule
inputs and params (dicts as sorted JSON, commands as strings), so that a changed setting re-runs exactly
the stages that depend on it; the rules in ``workflow/rules/`` only call them. A job is one run on one
seed (``instances``); figures are planned from their kind's declaration (``zigzag/figurekinds.py``).
"""

from __future__ import annotations

import json
import shlex

from zigzag.analysisconfig import AnalysisSettings
from zigzag.figurekinds import kind_of, labelled_runs, references

CLAIM_SETTINGS = ("thresholds", "seeds", "overall")  # the keys of ``claims`` that are not run groups


def claim_groups(config: dict) -> dict[str, list[str]]:
    """Claim group -> the runs it reads."""
    return {group: names for group, names in config["claims"].items() if group not in CLAIM_SETTINGS}


def claim_seed_instances(config: dict, run: str) -> list[str]:
    """The jobs of ``run`` that the claims read: one per seed of ``claims.seeds``, in that order."""
    return [instance_name(config, run, seed) for seed in config["claims"]["seeds"]]


def claims_spec(config: dict) -> str:
    """What ``zigzag table claims --spec`` takes: thresholds, seeds, the overall rule and, per claim
    group, every run's jobs (one per claims seed) with their files."""
    claims = config["claims"]
    groups = {group: [[[i, trajectory_file(config, i), analysis_file(config, i)]
                       for i in claim_seed_instances(config, run)] for run in names]
              for group, names in claim_groups(config).items()}
    return json.dumps({"thresholds": claims["thresholds"], "seeds": claims["seeds"], "overall": claims["overall"],
                       "groups": groups}, sort_keys=True)


def claims_instances(config: dict) -> list[str]:
    """Every job the claims read, each once."""
    return list(dict.fromkeys(i for names in claim_groups(config).values() for run in names
                              for i in claim_seed_instances(config, run)))


def entry_references(section: str, where: str, spec: dict):
    """(config path, run, window step or "auto" or None) for every run a figure or table entry reads."""
    if section == "figures":
        yield from references(f"figures.{where}", spec)
    else:
        for i, item in enumerate(spec["rows"]):
            yield f"tables.{where}.rows.{i}", item["run"], None


# ---------------------------------------------------------------------------------------------
# Run instances: one training job per (run, seed).


def seeds(run: dict) -> list[int]:
    return list(run.get("seeds", [run["seed"]]))


def instance_name(config: dict, run: str, seed: int) -> str:
    """The job of ``run`` on ``seed``: the run's name for its own single seed, else ``<run>-seed<s>``."""
    spec = config["runs"][run]
    return run if "seeds" not in spec and seed == spec["seed"] else f"{run}-seed{seed}"


def instances(config: dict, run: str) -> list[str]:
    """Job names of a run (what its figures and tables read): the run's name, or ``<run>-seed<s>`` for
    each of several seeds."""
    return [instance_name(config, run, s) for s in seeds(config["runs"][run])]


def all_instances(config: dict) -> dict[str, tuple[str, int]]:
    """Every job name -> (run, seed): each run's own seeds, and the seeds of ``claims.seeds`` for the
    runs the claims read."""
    jobs = {instance_name(config, run, seed): (run, seed)
            for run in config["runs"] for seed in seeds(config["runs"][run])}
    for names in claim_groups(config).values():
        for run in names:
            jobs.update({instance_name(config, run, seed): (run, seed) for seed in config["claims"]["seeds"]})
    return jobs


def single_seed_settings(run: dict, seed: int, dataset_path: str) -> dict:
    settings = {key: value for key, value in run.items() if key != "seeds"}
    settings.update(seed=seed, dataset=dataset_path)
    if settings["schedule"].get("kind") == "constant":
        settings["schedule"] = {}
    return settings


def run_settings(config: dict, instance: str, dataset_path: str) -> str:
    """One job's training settings as sorted JSON (what ``zigzag train --settings`` takes)."""
    run, seed = all_instances(config)[instance]
    return json.dumps(single_seed_settings(config["runs"][run], seed, dataset_path), sort_keys=True)


def run_of(config: dict, instance: str) -> str:
    return all_instances(config)[instance][0]


def figure_instances(config: dict, spec: dict) -> list[str]:
    """The jobs a figure reads: the first or every seed of each run it names (its kind says which)."""
    first_only = kind_of(spec).seeds == "first"
    runs = sorted({run for _, run, _ in references("", spec)})
    return [name for run in runs for name in instances(config, run)[: 1 if first_only else None]]


def table_instances(config: dict, spec: dict) -> list[str]:
    """The jobs a table reads: every seed of each of its rows' runs."""
    return [name for run in sorted({item["run"] for item in spec["rows"]}) for name in instances(config, run)]


def run_windows(config: dict, instance: str) -> list[int | str]:
    """Every window step any figure draws from this job, "auto" first when one lets the analysis find them
    (the analysis keeps exactly these matrices)."""
    run = run_of(config, instance)
    if instance != instances(config, run)[0]:
        return []
    wanted = {step for fid, fig in config["figures"].items()
              for _, r, step in references(fid, fig) if r == run and step is not None}
    return ["auto"] * ("auto" in wanted) + sorted(wanted - {"auto"})


def dataset_args(config: dict, name: str) -> str:
    """``zigzag prepare`` arguments for dataset ``name`` (a plain string: compared by Snakemake)."""
    spec = config["datasets"][name]
    args = [f"--dataset {spec['source']}", f"--seed {spec['seed']}"]
    if spec["data_root"]:
        args.append(f"--data-root {json.dumps(spec['data_root'])}")
    if spec["download"]:
        args.append("--download")
    if spec["train_size"]:
        args.append(f"--train-size {spec['train_size']}")
    return " ".join(args)


def analysis_args(config: dict, instance: str) -> str:
    """``zigzag analyze`` flags of a job: the config's analysis settings and the windows its figures draw."""
    windows = ",".join(map(str, run_windows(config, instance))) or "none"
    return AnalysisSettings(**config["analysis"], windows=windows).args()


def uses_gpu(config: dict, instance: str) -> int:
    """1 when the job trains on CUDA (device cuda, or auto on a machine that has nvidia-smi)."""
    import shutil

    device = config["runs"][run_of(config, instance)]["device"]
    return int(device == "cuda" or (device == "auto" and shutil.which("nvidia-smi") is not None))


# ---------------------------------------------------------------------------------------------
# Files and the figure and table rules' commands.


def dataset_file(config: dict, instance: str) -> str:
    return f"{config['results']}/data/{config['runs'][run_of(config, instance)]['dataset']}.h5"


def trajectory_file(config: dict, instance: str) -> str:
    return f"{config['results']}/runs/{instance}/trajectory.h5"


def analysis_file(config: dict, instance: str) -> str:
    return f"{config['results']}/analysis/{instance}.h5"


FILES = {"trajectory": trajectory_file, "analysis": analysis_file}  # what a figure kind reads -> its file


def figure_inputs(config: dict, spec: dict) -> dict[str, list[str]]:
    """The files a figure reads (named inputs ``trajectory``, ``analysis``): those its kind reads, of each job."""
    jobs = figure_instances(config, spec)
    return {name: [FILES[name](config, i) for i in jobs] for name in kind_of(spec).reads}


def figure_command(config: dict, fid: str, spec: dict) -> str:
    """The ``zigzag figure`` arguments of one figure (a plain string: a change re-runs the rule)."""
    kind = kind_of(spec)
    results = config["results"]

    def files(job: str) -> str:
        return " ".join(FILES[name](config, job) for name in kind.reads)

    if kind.seeds == "first" and kind.runs == "run":
        first = instances(config, spec["run"])[0]
        inputs = [f"--{name} {FILES[name](config, first)}" for name in kind.reads]
    elif kind.runs == "panels":
        inputs = [f"--panel {files(instances(config, p['run'])[0])} {shlex.quote(p['label'])} "
                  f"{p.get('step', 'auto')}" for p in spec["panels"]]
    else:
        inputs = [f"--curve {shlex.quote(item['label'])} " + " ".join(files(i) for i in instances(config, item["run"]))
                  for item in labelled_runs(spec)]
    args = [kind.command, *inputs, f"--title {shlex.quote(spec['title'])}", f"--png {results}/figures/{fid}.png",
            f"--pdf {results}/figures/{fid}.pdf"]
    if kind.windows:
        steps = spec.get("steps", "auto")
        args.append(f"--steps {steps if steps == 'auto' else ','.join(map(str, steps))}")
    return " ".join(args)


def table_command(config: dict, tid: str, spec: dict) -> str:
    """The ``zigzag table`` arguments of one table: a row per label with one trajectory per seed."""
    rows = [f"--row {shlex.quote(item['label'])} "
            + " ".join(trajectory_file(config, i) for i in instances(config, item["run"])) for item in spec["rows"]]
    return " ".join([spec["kind"], *rows, f"--caption {shlex.quote(spec['caption'])}",
                     f"--out {config['results']}/tables/{tid}"])
