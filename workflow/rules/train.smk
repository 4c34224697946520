rule train:
    """One run: GD or SGD with gradient lag statistics per step (zigzag-trajectory). A killed job resumes
    from <output>.resume/ when rerun (snakemake --rerun-incomplete). On a machine with several GPUs a
    job leases a free one through the lock files in <results>/gpu-locks/ (zigzag/gpulease.py)."""
    input:
        lambda w: dataset_file(w.run),
    output:
        trajectory_file("{run}"),
    params:
        settings=lambda w: pipeline.run_settings(config, w.run, dataset_file(w.run)),
        code=pipeline.code_hash("train"),
    threads: 1
    resources:
        gpu=lambda w: pipeline.uses_gpu(config, w.run),
    log:
        f"{R}/logs/train/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}.tsv"
    shell:
        "{ZIGZAG} train --settings '{params.settings}' --threads {threads} --quiet --gpu-locks {R}/gpu-locks"
        " --out {output} > {log} 2>&1"
