rule train:
    """One job (a run on one seed): GD or SGD with gradient lag statistics per step (zigzag-trajectory).
    A killed job resumes from <output>.resume/ when rerun (snakemake --rerun-incomplete). On a machine
    with several GPUs a job leases a free one through the lock files in <results>/gpu-locks/
    (zigzag/gpulease.py); a run with processes: N is N torchrun processes of one thread (and one GPU) each."""
    input:
        lambda w: pipeline.dataset_file(config, w.job),
        model=lambda w: pipeline.model_files(config, w.job),
    output:
        pipeline.trajectory_file(config, "{job}"),
    log:
        pipeline.log_file(config, "train", "{job}"),
    benchmark:
        pipeline.benchmark_file(config, "{job}")
    # not the jobs of trajectory runs: their file is recorded, never trained
    wildcard_constraints:
        job="|".join(re.escape(name) for name in pipeline.trained_jobs(config)) or "^$",
    priority: lambda w: pipeline.train_priority(config, w.job)
    # One torch thread per process (threads: the run's processes): the thread count changes the CPU's sums (a run's numbers), so one thread keeps
    # them the same on every machine, and two one-thread jobs use two cores better than one two-thread job.
    # A job holds train_cpus (one per thread), which common.smk caps at this machine's CPUs whatever --cores
    # says; the quickest figure's jobs start first, then the longest
    # (docs/design.md, "Cores and the order of jobs").
    threads: lambda w: pipeline.run_processes(config, w.job)
    resources:
        gpu=lambda w: pipeline.uses_gpu(config, w.job) * pipeline.run_processes(config, w.job),
        train_cpus=lambda w, threads: threads,
    params:
        # Not a function of input: Snakemake compares only the params that take neither input nor output.
        settings=lambda w: pipeline.run_settings(config, w.job, pipeline.dataset_file(config, w.job)),
        code=codehash.code_hash("train"),
        gpu_locks=pipeline.gpu_locks_folder(config),
        launch=lambda w: pipeline.train_launcher(config, w.job),
    shell:
        "{params.launch} train --settings {params.settings:q} --threads 1 --quiet"
        " --gpu-locks {params.gpu_locks:q} --out {output:q} > {log:q} 2>&1"
