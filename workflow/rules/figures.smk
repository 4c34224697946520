# One rule per figure of the config (figure_<id>), planned from its kind (zigzag/figurekinds.py): it
# reads only analysis and trajectory files.
import json

for fid, spec in config["figures"].items():

    rule:
        name:
            f"figure_{fid}"
        input:
            **pipeline.figure_inputs(config, spec),
        output:
            png=report(
                f"{R}/figures/{fid}.png",
                caption="../report/figure.rst",
                category="Figures",
                labels={"figure": fid, "kind": spec["kind"]},
            ),
            pdf=f"{R}/figures/{fid}.pdf",
        log:
            f"{R}/logs/figures/{fid}.log",
        params:
            spec=json.dumps(spec, sort_keys=True),
            code=codehash.code_hash("figures"),
            command=pipeline.figure_command(config, fid, spec),
        shell:
            "zigzag figure {params.command} > {log} 2>&1"


rule all_figures:
    input:
        [f"{R}/figures/{fid}.{ext}" for fid in config["figures"] for ext in ("png", "pdf")],
