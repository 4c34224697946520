# One rule per table of the config (table_<id>): it reads only trajectory files. Params are functions,
# so Snakemake takes a caption's braces literally instead of as wildcards.
import json

for tid, spec in config["tables"].items():

    rule:
        name:
            f"table_{tid}"
        input:
            [pipeline.trajectory_file(config, job) for job in pipeline.table_jobs(config, spec)],
        output:
            csv=report(pipeline.table_file(config, tid, "csv"), caption="../report/table.rst", category="Tables"),
            md=pipeline.table_file(config, tid, "md"),
            tex=pipeline.table_file(config, tid, "tex"),
        log:
            pipeline.log_file(config, "tables", tid),
        params:
            spec=lambda w, spec=spec: json.dumps(spec, sort_keys=True),
            code=codehash.code_hash("tables"),
            command=lambda w, spec=spec: pipeline.table_command(config, spec),
            out=lambda w, output: pipeline.table_prefix(output.csv),
        shell:
            "zigzag table {params.command} --out {params.out:q} > {log:q} 2>&1"


rule all_tables:
    input:
        [pipeline.table_file(config, tid, ext) for tid in config["tables"] for ext in pipeline.TABLE_EXTS],
