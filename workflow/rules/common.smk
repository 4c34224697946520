# Validation and helpers shared by every rule. A bad config stops here, before any job, with one line.
import os
import re
import shlex
import sys

from zigzag import codehash, configcheck, pipeline
from zigzag.errors import ZigzagError

try:
    for path in workflow.configfiles:  # Snakemake's reader lets a repeated key (a run name) silently win
        configcheck.check_unique_keys(path)
    configcheck.checked_config(
        config,
        workflow.source_path("../schemas/config.schema.yaml"),
        os.path.dirname(workflow.configfiles[-1]) if workflow.configfiles else ".",
    )
except ZigzagError as err:
    sys.stderr.write(f"zigzag: config error: {err}\n")
    sys.exit(2)
# The config's one addition: a figure sharpness_<run> for every run that records sharpness.
configcheck.add_sharpness_figures(config)

# Training jobs are CPU-bound: run here, they hold at most as many train_cpus as this process may use, so
# `--cores 8` on two CPUs trains two jobs at a time, not eight that share them. `--resources train_cpus=N`
# sets another limit; on a cluster (--jobs) each job has its own node and nothing is capped.
if workflow.nodes is None and "train_cpus" not in workflow.global_resources:
    workflow.register_resource("train_cpus", pipeline.usable_cpus())

JOBS = pipeline.all_jobs(config)  # job name -> (run, seed): one training job each

# `zigzag` in a rule's shell command: the package's command line, run by the interpreter that runs
# Snakemake (a shell function, so neither a param nor the command text names the interpreter's path).
shell.prefix(f'set -euo pipefail; zigzag() ( exec {shlex.quote(sys.executable)} -m zigzag "$@" ); ')


wildcard_constraints:
    job="|".join(re.escape(name) for name in JOBS) or "^$",
    dataset="|".join(re.escape(name) for name in config["datasets"]),
