rule all_sweeps:
    """The figures and tables of the config's sweeps (a phase diagram, the onset table): trains every point of
    every sweep they read; each point is an ordinary run, cached on its own."""
    input:
        [
            pipeline.figure_file(config, fid, ext)
            for fid in pipeline.entries(config, "figures", sweeps=True)
            for ext in pipeline.FIGURE_EXTS
        ],
        [
            pipeline.table_file(config, tid, ext)
            for tid in pipeline.entries(config, "tables", sweeps=True)
            for ext in pipeline.TABLE_EXTS
        ],
