rule table_claims:
    """One row per claim of the paper: paper value, measured value per seed, runs, threshold, a verdict per
    seed of claims.seeds and the overall verdict by claims.overall."""
    input:
        trajectories=[pipeline.trajectory_file(config, job) for job in pipeline.claims_jobs(config)],
        analyses=[pipeline.analysis_file(config, job) for job in pipeline.claims_jobs(config)],
    output:
        csv=report(pipeline.table_file(config, "claims", "csv"), caption="../report/claims.rst", category="Tables"),
        md=pipeline.table_file(config, "claims", "md"),
        tex=pipeline.table_file(config, "claims", "tex"),
    log:
        pipeline.log_file(config, "tables", "claims"),
    params:
        spec=lambda w: pipeline.claims_spec(config),
        code=codehash.code_hash("tables"),
        out=lambda w, output: pipeline.table_prefix(output.csv),
    shell:
        "zigzag table claims --spec {params.spec:q} --out {params.out:q} > {log:q} 2>&1"


rule all_claims:
    """The claims table on every seed of claims.seeds: trains the seeds the figures do not need."""
    input:
        [pipeline.table_file(config, "claims", ext) for ext in pipeline.TABLE_EXTS],
