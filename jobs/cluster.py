"""The dask client for a job: a scheduler address from the config, or a local cluster
(``LocalCUDACluster`` from dask-cuda on the GPU backend, ``LocalCluster`` otherwise)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import dask

from homerank.engine.backend import Backend
from homerank.engine.errors import HomerankError
from homerank.jobs.config import ClusterConfig
from homerank.jobs.hygiene import quiet_noisy_loggers

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(config: ClusterConfig, backend: Backend) -> Iterator[object]:
    from distributed import Client

    quiet_noisy_loggers()

    method = shuffle_method(config, backend)
    if config.address:
        try:
            client = Client(config.address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise HomerankError(f"cluster.address: cannot reach dask scheduler {config.address} ({exc})") from None
        log.info("dask: connected to %s, shuffle %s", config.address, method)
        with client, dask.config.set({"dataframe.shuffle.method": method}):
            yield client
        return
    cluster = backend.local_cluster(config.n_workers, config.threads_per_worker, config.processes,
                                    config.dashboard_address, config.memory_limit, config.local_directory,
                                    config.rmm_pool_size, config.cudf_spill)
    try:
        with Client(cluster) as client, dask.config.set({"dataframe.shuffle.method": method}):
            log.info("dask: local cluster with %d worker(s), shuffle %s, dashboard %s", len(cluster.workers),
                     method, client.dashboard_link)
            yield client
    finally:
        _close_quietly(cluster)


CLOSE_TIMEOUT_S = 60


def _close_quietly(cluster: object) -> None:
    """Stop the local cluster. The job's outputs are written before this point, so worker processes that take
    longer than `CLOSE_TIMEOUT_S` to exit (a worker deleting gigabytes of spilled partitions) are a warning, not a
    failed job (measured: at 10^8 events with spilling, the nannies' default join timed out after the ETL had
    published everything)."""
    try:
        cluster.close(timeout=CLOSE_TIMEOUT_S)  # type: ignore[attr-defined]
    except TimeoutError as exc:  # asyncio.TimeoutError is TimeoutError since 3.11
        log.warning("dask: the local cluster did not stop within %d s (%s); its workers are left to exit",
                    CLOSE_TIMEOUT_S, type(exc).__name__)


def shuffle_method(config: ClusterConfig, backend: Backend) -> str:
    """``cluster.shuffle``, with 'auto' resolved: 'tasks' where rows can stay in memory as task results (the
    threads of one local process; GPU frames, which dask-cuda shuffles as tasks), 'p2p' between worker processes
    (bounded memory, spills to disk: the out-of-core case)."""
    if config.shuffle != "auto":
        return config.shuffle
    in_process = not config.address and not config.processes
    return "tasks" if in_process or backend.frames_on_gpu else "p2p"
