# Validation and helpers shared by every rule. A bad config stops here, before any job, with one line.
import sys

from zigzag import pipeline
from zigzag.errors import ZigzagError

try:
    pipeline.checked_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except ZigzagError as err:
    sys.stderr.write(f"zigzag: config error: {err}\n")
    sys.exit(2)

R = config["results"]
ZIGZAG = f"{sys.executable} -m zigzag"


def dataset_file(run):
    return f"{R}/data/{config['runs'][run]['dataset']}.h5"


def trajectory_file(run):
    return f"{R}/runs/{run}/trajectory.h5"


def analysis_file(run):
    return f"{R}/analysis/{run}.h5"
