rule prepare_dataset:
    """Read a dataset source once into a compact uint8 HDF5 cache (zigzag-dataset)."""
    output:
        f"{R}/data/{{dataset}}.h5",
    params:
        args=lambda w: pipeline.dataset_args(config, w.dataset),
        code=pipeline.code_hash("prepare"),
    log:
        f"{R}/logs/prepare_dataset/{{dataset}}.log",
    shell:
        "{ZIGZAG} prepare {params.args} --out {output} > {log} 2>&1"
