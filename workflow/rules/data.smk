rule prepare_dataset:
    """Read a dataset source once into a compact uint8 HDF5 cache (zigzag-dataset)."""
    output:
        f"{R}/data/{{dataset}}.h5",
    log:
        f"{R}/logs/prepare_dataset/{{dataset}}.log",
    params:
        args=lambda w: pipeline.dataset_args(config, w.dataset),
        code=codehash.code_hash("prepare"),
    shell:
        "zigzag prepare {params.args} --out {output} > {log} 2>&1"
