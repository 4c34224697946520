rule prepare_dataset:
    """Read a dataset source once into a compact uint8 HDF5 cache (zigzag-dataset)."""
    output:
        pipeline.data_file(config, "{dataset}"),
    log:
        pipeline.log_file(config, "prepare_dataset", "{dataset}"),
    params:
        args=lambda w: pipeline.dataset_args(config, w.dataset),
        code=codehash.code_hash("prepare"),
    shell:
        "zigzag prepare {params.args} --out {output:q} > {log:q} 2>&1"
