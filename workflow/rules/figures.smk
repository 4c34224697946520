# One rule per figure of the config: figure_<id>. Each reads only analysis and trajectory files.
import json
import shlex

FIGURE_CODE = pipeline.code_hash("figures")


def figure_command(fid, spec):
    args = [f"--title {shlex.quote(spec['title'])}", f"--png {R}/figures/{fid}.png", f"--pdf {R}/figures/{fid}.pdf"]
    if spec["kind"] == "trajectory":
        return " ".join(["trajectory", f"--trajectory {trajectory_file(spec['run'])}",
                         f"--analysis {analysis_file(spec['run'])}", *args])
    panels = [f"--panel {analysis_file(p['run'])} {shlex.quote(p['label'])} {p['step']}" for p in spec["panels"]]
    return " ".join(["sign-shift", *panels, *args])


for fid, spec in config["figures"].items():

    rule:
        name:
            f"figure_{fid}"
        input:
            trajectories=[trajectory_file(r) for r in pipeline.figure_runs(spec)],
            analyses=[analysis_file(r) for r in pipeline.figure_runs(spec)],
        output:
            png=report(f"{R}/figures/{fid}.png", caption="../report/figure.rst", category="Figures",
                       labels={"figure": fid, "kind": spec["kind"]}),
            pdf=f"{R}/figures/{fid}.pdf",
        params:
            spec=json.dumps(spec, sort_keys=True),
            code=FIGURE_CODE,
            command=figure_command(fid, spec),
        log:
            f"{R}/logs/figures/{fid}.log",
        shell:
            "{ZIGZAG} figure {params.command} > {log} 2>&1"


rule all_figures:
    input:
        [f"{R}/figures/{fid}.{ext}" for fid in config["figures"] for ext in ("png", "pdf")],


rule all_tables:
    input:
        [],
