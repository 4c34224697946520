rule analyze:
    """Mean gradient correlation (eq. 3), window and sign-shift matrices, phases (zigzag-analysis)."""
    input:
        lambda w: trajectory_file(w.run),
    output:
        analysis_file("{run}"),
    params:
        args=lambda w: pipeline.analysis_args(config, w.run),
        code=pipeline.code_hash("analyze"),
    log:
        f"{R}/logs/analyze/{{run}}.log",
    shell:
        "{ZIGZAG} analyze {input} --out {output} {params.args} > {log} 2>&1"
