rule prepare_dataset:
    """Read a dataset source once into a compact HDF5 cache (zigzag-dataset); a ``from`` source's files are inputs."""
    input:
        lambda w: pipeline.dataset_inputs(config, w.dataset),
    output:
        pipeline.data_file(config, "{dataset}"),
    log:
        pipeline.log_file(config, "prepare_dataset", "{dataset}"),
    params:
        args=lambda w: pipeline.dataset_args(config, w.dataset),
        code=codehash.code_hash("prepare"),
    shell:
        "zigzag prepare {params.args} --out {output:q} > {log:q} 2>&1"
