# One rule per table of the config (table_<id>): it reads only trajectory files.
import json

for tid, spec in config["tables"].items():

    rule:
        name:
            f"table_{tid}"
        input:
            [pipeline.trajectory_file(config, i) for i in pipeline.table_instances(config, spec)],
        output:
            csv=report(f"{R}/tables/{tid}.csv", caption="../report/table.rst", category="Tables"),
            md=f"{R}/tables/{tid}.md",
            tex=f"{R}/tables/{tid}.tex",
        log:
            f"{R}/logs/tables/{tid}.log",
        params:
            spec=json.dumps(spec, sort_keys=True),
            code=codehash.code_hash("tables"),
            command=pipeline.table_command(config, tid, spec),
        shell:
            "zigzag table {params.command} > {log} 2>&1"


rule all_tables:
    input:
        [f"{R}/tables/{tid}.{ext}" for tid in config["tables"] for ext in ("csv", "md", "tex")],
