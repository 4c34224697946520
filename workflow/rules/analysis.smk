rule analyze:
    """Mean gradient correlation (eq. 3), window and sign-shift matrices, phases (zigzag-analysis)."""
    input:
        lambda w: pipeline.trajectory_file(config, w.job),
    output:
        pipeline.analysis_file(config, "{job}"),
    log:
        f"{R}/logs/analyze/{{job}}.log",
    params:
        args=lambda w: pipeline.analysis_args(config, w.job),
        code=codehash.code_hash("analyze"),
    shell:
        "zigzag analyze {input} --out {output} {params.args} > {log} 2>&1"
