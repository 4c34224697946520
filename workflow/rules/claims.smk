rule table_claims:
    """One row per claim of the paper: paper value, measured value per seed, runs, threshold, a verdict per
    seed of claims.seeds and the overall verdict by claims.overall."""
    input:
        trajectories=[pipeline.trajectory_file(config, i) for i in pipeline.claims_instances(config)],
        analyses=[pipeline.analysis_file(config, i) for i in pipeline.claims_instances(config)],
    output:
        csv=report(f"{R}/tables/claims.csv", caption="../report/claims.rst", category="Tables"),
        md=f"{R}/tables/claims.md",
        tex=f"{R}/tables/claims.tex",
    log:
        f"{R}/logs/tables/claims.log",
    params:
        spec=pipeline.claims_spec(config),
        code=codehash.code_hash("tables"),
        out=lambda w, output: output.csv.removesuffix(".csv"),
    shell:
        "zigzag table claims --spec '{params.spec}' --out {params.out} > {log} 2>&1"


rule all_claims:
    """The claims table on every seed of claims.seeds: trains the seeds the figures do not need."""
    input:
        [f"{R}/tables/claims.{ext}" for ext in ("csv", "md", "tex")],
