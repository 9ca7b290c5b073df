"""jobs: the batch jobs and the ``homerank`` command line.

    config     one typed YAML config (unknown keys / wrong types are errors), presets, --set overrides
    rundir     every path of a run directory and atomic writes (temp path, then rename)
    lock       one job at a time per run directory (flock on RUN/.homerank.lock, released when the job exits)
    pipeline   the stages in order, fingerprints for --resume, timings
    stage_*    etl -> graph -> train -> evaluate -> rank -> homepage, each reading earlier artifacts
    artifacts  what a stage reads from earlier stages (no stage imports another)
    recommend  top-K in original ids for any users: the rank stage and homerank.Run.recommend
    gates      data-quality gates after the ETL
    cluster    dask.distributed / dask-cuda client from the config (never a home-made cluster)
    report     metrics.json + report.md/.html; preview: one user's page as HTML
    hygiene    warnings and log-file hygiene shared by the command line and the Python API
    cli        ``homerank generate | etl | graph | train | evaluate | rank | homepage | preview | run | demo``
"""
