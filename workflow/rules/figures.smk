# One rule per figure (figure_<id>) and per table (table_<id>) of the config. They read only
# analysis and trajectory files.
import json
import shlex

FIGURE_CODE = pipeline.code_hash("figures")
TABLE_CODE = pipeline.code_hash("tables")


def curve_args(flag, items, analyses=True):
    """FLAG LABEL TRAJ [ANALYSIS] [TRAJ [ANALYSIS] ...] per item: the files of every seed."""
    args = []
    for item in items:
        files = [f"{trajectory_file(i)} {analysis_file(i)}" if analyses else trajectory_file(i)
                 for i in pipeline.instances(config, item["run"])]
        args.append(f"{flag} {shlex.quote(item['label'])} {' '.join(files)}")
    return args


def figure_command(fid, spec):
    """The `zigzag figure ...` arguments of one figure (a plain string: a change re-runs the rule)."""
    args = [f"--title {shlex.quote(spec['title'])}", f"--png {R}/figures/{fid}.png", f"--pdf {R}/figures/{fid}.pdf"]
    kind = spec["kind"]
    if kind in ("trajectory", "sharpness"):
        first = pipeline.instances(config, spec["run"])[0]
        if kind == "trajectory":
            steps = spec.get("steps", "auto")
            args.append(f"--steps {steps if steps == 'auto' else ','.join(map(str, steps))}")
        return " ".join([kind, f"--trajectory {trajectory_file(first)}", f"--analysis {analysis_file(first)}", *args])
    if kind == "sign_shift":
        panels = [f"--panel {analysis_file(pipeline.instances(config, p['run'])[0])} {shlex.quote(p['label'])} "
                  f"{p.get('step', 'auto')}" for p in spec["panels"]]
        return " ".join(["sign-shift", *panels, *args])
    if kind == "warmup":
        return " ".join(["warmup", *curve_args("--curve", [{"run": spec["run"], "label": spec["run"]}]), *args])
    return " ".join([kind.replace("_", "-"), *curve_args("--curve", spec["curves"]), *args])


for fid, spec in config["figures"].items():

    rule:
        name:
            f"figure_{fid}"
        input:
            trajectories=[trajectory_file(i) for i in pipeline.spec_instances(config, spec)],
            analyses=[analysis_file(i) for i in pipeline.spec_instances(config, spec)],
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


for tid, spec in config["tables"].items():

    rule:
        name:
            f"table_{tid}"
        input:
            [trajectory_file(i) for i in pipeline.spec_instances(config, spec)],
        output:
            csv=report(f"{R}/tables/{tid}.csv", caption="../report/table.rst", category="Tables"),
            md=f"{R}/tables/{tid}.md",
            tex=f"{R}/tables/{tid}.tex",
        params:
            spec=json.dumps(spec, sort_keys=True),
            code=TABLE_CODE,
            command=" ".join([spec["kind"], *curve_args("--row", spec["rows"], analyses=False),
                              f"--caption {shlex.quote(spec['caption'])}", f"--out {R}/tables/{tid}"]),
        log:
            f"{R}/logs/tables/{tid}.log",
        shell:
            "{ZIGZAG} table {params.command} > {log} 2>&1"


rule table_claims:
    """One row per claim of the paper: paper value, measured value per seed, runs, threshold, a verdict per
    seed of claims.seeds and the overall verdict by claims.overall."""
    input:
        trajectories=[trajectory_file(i) for i in pipeline.claims_instances(config)],
        analyses=[analysis_file(i) for i in pipeline.claims_instances(config)],
    output:
        csv=report(f"{R}/tables/claims.csv", caption="../report/claims.rst", category="Tables"),
        md=f"{R}/tables/claims.md",
        tex=f"{R}/tables/claims.tex",
    params:
        spec=pipeline.claims_spec(config, trajectory_file, analysis_file),
        code=TABLE_CODE,
    log:
        f"{R}/logs/tables/claims.log",
    shell:
        "{ZIGZAG} table claims --spec '{params.spec}' --out {R}/tables/claims > {log} 2>&1"


rule all_figures:
    input:
        [f"{R}/figures/{fid}.{ext}" for fid in config["figures"] for ext in ("png", "pdf")],


rule all_tables:
    input:
        [f"{R}/tables/{tid}.{ext}" for tid in config["tables"] for ext in ("csv", "md", "tex")],


rule all_claims:
    """The claims table on every seed of claims.seeds: trains the seeds the figures do not need."""
    input:
        [f"{R}/tables/claims.{ext}" for ext in ("csv", "md", "tex")],
