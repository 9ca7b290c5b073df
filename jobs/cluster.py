"""The dask client for a job: a scheduler address from the config, or a local cluster
(``LocalCUDACluster`` from dask-cuda on the GPU backend, ``LocalCluster`` otherwise)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from homerank.engine.backend import Backend
from homerank.engine.errors import HomerankError
from homerank.jobs.config import ClusterConfig
from homerank.jobs.hygiene import quiet_noisy_loggers

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(config: ClusterConfig, backend: Backend) -> Iterator[object]:
    from distributed import Client

    quiet_noisy_loggers()

    if config.address:
        try:
            client = Client(config.address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise HomerankError(f"cluster.address: cannot reach dask scheduler {config.address} ({exc})") from None
        log.info("dask: connected to %s", config.address)
        with client:
            yield client
        return
    cluster = backend.local_cluster(config.n_workers, config.threads_per_worker, config.processes,
                                    config.dashboard_address)
    with cluster, Client(cluster) as client:
        log.info("dask: local cluster with %d worker(s), dashboard %s", len(cluster.workers), client.dashboard_link)
        yield client
