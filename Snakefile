# zigzag: the optimization geometry of deep networks, from data to the paper's figures.
#   snakemake --cores 8 all_figures                         # the offline default (config.yaml)
#   snakemake --cores 8 all_figures --configfile presets/paper.yaml   # the paper, on a GPU
from snakemake.utils import min_version

min_version("9.0")


# A --configfile (e.g. a preset) is a whole config: it replaces config.yaml instead of merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/sweeps.smk"


rule all:
    default_target: True
    input:
        pipeline.figure_files(config),
        rules.all_tables.input,
        rules.all_claims.input,
        rules.all_sweeps.input,
