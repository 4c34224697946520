# Validation and helpers shared by every rule. A bad config stops here, before any job, with one line.
import re
import sys

from zigzag import pipeline
from zigzag.errors import ZigzagError

try:
    for path in workflow.configfiles:  # Snakemake's reader lets a repeated key (a run name) silently win
        pipeline.check_unique_keys(path)
    pipeline.checked_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except ZigzagError as err:
    sys.stderr.write(f"zigzag: config error: {err}\n")
    sys.exit(2)

R = config["results"]
ZIGZAG = f"{sys.executable} -m zigzag"
INSTANCES = pipeline.all_instances(config)  # job name -> (run, seed): one training job each


wildcard_constraints:
    run="|".join(re.escape(name) for name in INSTANCES) or "^$",
    dataset="|".join(re.escape(name) for name in config["datasets"]),


def dataset_file(instance):
    return f"{R}/data/{config['runs'][pipeline.run_of(config, instance)]['dataset']}.h5"


def trajectory_file(instance):
    return f"{R}/runs/{instance}/trajectory.h5"


def analysis_file(instance):
    return f"{R}/analysis/{instance}.h5"
