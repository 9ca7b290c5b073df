"""The dask client for a job: a scheduler address from the config, or a local cluster
(``LocalCUDACluster`` from dask-cuda on the GPU backend, ``LocalCluster`` otherwise)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dask

from homerank.engine.errors import HomerankError
from homerank.jobs.config import ClusterConfig
from homerank.jobs.hygiene import quiet_noisy_loggers

if TYPE_CHECKING:
    from homerank.engine.backend import Backend

log = logging.getLogger(__name__)


THREADS_PER_PARQUET_BYTE = 15  # one process running the ETL on threads peaks at ~15x the log's Parquet bytes
THREADS_PER_CSV_BYTE = 3  # (10^7 events: 2.8 GB for 188 MB of Parquet), and at ~3x a CSV log's bytes
PROCESSES_ABOVE_SHARE = 0.5  # auto: worker processes once that passes this share of the machine's memory
THREADS_UP_TO_BYTES = 1 << 30  # ... or passes this: the job's own process stays small, the data on the workers


def choose_processes(setting: bool | str, input_path: str | list[str] | None, input_format: str = "auto",
                     memory_bytes: int | None = None, client_bytes: int = THREADS_UP_TO_BYTES,
                     quiet: bool = False) -> bool:
    """``cluster.processes`` resolved: ``auto`` is threads (one process: no transfers between workers and no
    worker processes to start, the fastest for a small log) unless the log at ``input_path`` would make that
    process hold more than ``client_bytes`` or pass ``PROCESSES_ABOVE_SHARE`` of the machine's memory
    (``memory_bytes``, by default psutil's total), estimated from its files' bytes; then worker processes, each
    with a memory limit, the p2p shuffle and spilling, and the job's process holds only small tables. The switch is
    for the job's memory, not for speed: at 10^7 events on 2 cores (2026-11-27) the medians of 3 repeats were
    threads 6.49 s with 1.7 GiB in the job's process against worker processes 5.96 s with 0.27 GiB, but one cold
    run each, alternating, took threads 6.7-8.5 s and worker processes 7.2-10.0 s (the forkserver's start).
    Without an input (stages other than the ETL), threads."""
    if setting != "auto":
        return bool(setting)
    if input_path is None or input_format == "lightgcn":
        return False
    from homerank.engine.input_files import discover_files

    files = discover_files(input_path, input_format)
    estimate = sum(os.path.getsize(f.path) * (THREADS_PER_PARQUET_BYTE if f.format == "parquet"
                                              else THREADS_PER_CSV_BYTE) for f in files)
    memory = memory_bytes if memory_bytes is not None else _machine_memory()
    chosen = estimate > min(PROCESSES_ABOVE_SHARE * memory, client_bytes)
    if not quiet:
        log.info("dask: cluster.processes auto: %s (the log would take ~%.1f GiB in one process; threads up to %.1f "
                 "GiB, the machine has %.1f GiB)", "worker processes" if chosen else "threads of one process",
                 estimate / 2**30, client_bytes / 2**30, memory / 2**30)
    return chosen


def start_workers_early(config: ClusterConfig, device: str, input_path: str | list[str] | None,
                        input_format: str = "auto") -> bool:
    """For `homerank etl` and `homerank run`, called before the job imports its data frame libraries: when its ETL
    will start local CPU worker processes from a forkserver (no ``cluster.address``, frames that cannot be on the
    GPU, `choose_processes` true for this log, ``cluster.start_method`` resolving to forkserver), start that server
    now, so that its imports (~1.5 s on 2 cores) run while the job's own do. True when it was started; a bad input
    is left for the stage to report."""
    import importlib.util

    from homerank.engine.worker_processes import resolve_start_method, start_forkserver, worker_environment

    if config.address or input_path is None or resolve_start_method(config.start_method) != "forkserver":
        return False
    if device != "cpu" and importlib.util.find_spec("cudf") is not None:  # frames may go to the GPU: dask-cuda
        return False
    try:
        if not choose_processes(config.processes, input_path, input_format, quiet=True):
            return False
    except (HomerankError, OSError):
        return False
    start_forkserver(worker_environment())
    log.debug("dask: forkserver for the worker processes started early")
    return True


def _machine_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


@contextlib.contextmanager
def dask_client(config: ClusterConfig, backend: Backend, input_path: str | list[str] | None = None,
                input_format: str = "auto") -> Iterator[object]:
    """A client on ``cluster.address``, or on a local cluster shaped by ``config`` (``processes: auto`` decided
    from the log at ``input_path``, `choose_processes`)."""
    from distributed import Client

    quiet_noisy_loggers()

    if not config.address:
        config = config.model_copy(update={"processes": choose_processes(config.processes, input_path,
                                                                          input_format)})
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
    from homerank.engine.worker_processes import environment_restored, worker_environment

    with environment_restored([*worker_environment(), "PYTHONHASHSEED"]):  # the nannies set them in this process
        with _local_client(config, backend, method) as client:
            yield client


@contextlib.contextmanager
def _local_client(config: ClusterConfig, backend: Backend, method: str) -> Iterator[object]:
    from distributed import Client

    cluster = backend.local_cluster(config.n_workers, config.threads_per_worker, config.processes,
                                    config.dashboard_address, config.memory_limit, config.local_directory,
                                    config.rmm_pool_size, config.cudf_spill, config.start_method)
    try:
        with Client(cluster) as client, dask.config.set({"dataframe.shuffle.method": method}):
            log.info("dask: local cluster with %d worker(s), shuffle %s, dashboard %s", len(cluster.workers),
                     method, dashboard_link(cluster, config.dashboard_address, client.dashboard_link))
            yield client
    finally:
        _close_quietly(cluster)


def dashboard_link(cluster: Any, dashboard_address: str, dask_link: str) -> str:
    """The local cluster's dashboard as it listens: ``http://HOST:PORT/status`` with the host of
    ``cluster.dashboard_address`` and the port the scheduler's HTTP server took. dask's own link names the host of
    the scheduler's address, which for an in-process cluster (worker threads) is the machine's network address,
    where nothing listens (the dashboard is bound to localhost); ``dask_link`` when the port is unknown or the
    dashboard listens on every interface."""
    host = dashboard_address.rpartition(":")[0]
    server = getattr(getattr(cluster, "scheduler", None), "http_server", None)
    port = getattr(server, "port", None)
    if not port or host in ("", "0.0.0.0", "::", "[::]"):  # every interface: dask's link names one of them
        return dask_link
    return f"http://{host}:{port}/status"


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
    in_process = not config.address and config.processes in (False, "auto")  # auto without a log: threads
    return "tasks" if in_process or backend.frames_on_gpu else "p2p"
