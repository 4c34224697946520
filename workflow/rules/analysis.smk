rule analyze:
    """Mean gradient correlation (eq. 3), window and sign-shift matrices, phases (zigzag-analysis)."""
    input:
        lambda w: pipeline.trajectory_file(config, w.job),
    output:
        pipeline.analysis_file(config, "{job}"),
    log:
        pipeline.log_file(config, "analyze", "{job}"),
    priority: pipeline.finishing_priority(config)
    params:
        args=lambda w: pipeline.analysis_args(config, w.job),
        code=codehash.code_hash("analyze"),
    shell:
        "zigzag analyze {input:q} --out {output:q} {params.args} > {log:q} 2>&1"
