"""jobs: the batch jobs and the ``homerank`` command line.

    config   one typed YAML config (unknown keys / wrong types are errors)
    rundir   run-directory layout and atomic writes (temp path, then rename)
    cluster  dask.distributed / dask-cuda client from the config (never a home-made cluster)
    stages   etl -> graph -> train -> evaluate -> rank, each reading the previous stage's artifacts
    report   metrics.json + report.md
    cli      ``homerank generate | etl | graph | train | evaluate | rank | run | demo``
"""
