# One rule per figure of the config (figure_<id>), planned from its kind (zigzag/figurekinds.py): it
# reads only analysis and trajectory files. Params are functions, so Snakemake takes a title's braces
# literally instead of as wildcards.
import json

for fid, spec in config["figures"].items():

    rule:
        name:
            f"figure_{fid}"
        input:
            **pipeline.figure_inputs(config, spec),
        output:
            png=report(
                pipeline.figure_file(config, fid, "png"),
                caption="../report/figure.rst",
                category="Figures",
                labels={"figure": fid, "kind": spec["kind"]},
            ),
            pdf=pipeline.figure_file(config, fid, "pdf"),
        log:
            pipeline.log_file(config, "figures", fid),
        priority: pipeline.finishing_priority(config)
        params:
            spec=lambda w, spec=spec: json.dumps(spec, sort_keys=True),
            code=codehash.code_hash("figures"),
            command=lambda w, spec=spec: pipeline.figure_command(config, spec),
        shell:
            "zigzag figure {params.command} --png {output.png:q} --pdf {output.pdf:q} > {log:q} 2>&1"


rule all_figures:
    input:
        [
            pipeline.figure_file(config, fid, ext)
            for fid in pipeline.entries(config, "figures", sweeps=False)
            for ext in pipeline.FIGURE_EXTS
        ],
