# One rule per table of the config (table_<id>): it reads trajectory files (a sweep's table: and analyses). Params are functions,
# so Snakemake takes a caption's braces literally instead of as wildcards.
import json

for tid, spec in config["tables"].items():

    rule:
        name:
            f"table_{tid}"
        input:
            pipeline.table_inputs(config, spec),
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
        [
            pipeline.table_file(config, tid, ext)
            for tid in pipeline.entries(config, "tables", sweeps=False)
            for ext in pipeline.TABLE_EXTS
        ],
