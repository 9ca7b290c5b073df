"""How a local CPU cluster starts its worker processes, and the malloc settings every worker gets.

dask's nannies start worker processes with ``multiprocessing``; dask's default method is ``spawn``: a fresh
interpreter per worker that imports pandas, pyarrow, dask and homerank again on its first task (~0.9 s per worker
on this project's 2-core machine, both at once), and the cluster takes ~0.4 s to stop.

``cluster.start_method: auto`` uses ``forkserver`` on Linux instead: one server process, started once per job
process, imports the worker-side modules (`WORKER_MODULES`) once; every worker is then a fork of that
single-threaded server, ready at once, and stops in ~0.03 s. A second local cluster in the same process (a test
suite, the bench's repeats) forks from the same server without importing anything.

Plain ``fork`` of the job's process is not offered: measured here, it hung the ETL. A forked worker inherits
copies of the parent's thread pools without their threads (dask's own offload executor, which (de)serialises large
messages, had run in the parent), so the first large transfer between two workers waited forever (the scheduler
had a k-core task "processing" on an idle worker whose input stayed "in flight"), and the parent's listening
sockets stayed open in every worker.

The forkserver keeps the environment it was started with, so `start_forkserver` sets the workers' variables (dask's
``distributed.nanny.pre-spawn-environ``: one BLAS thread, and `WORKER_MALLOC`) first, as dask's nanny itself does
in the job's process before it starts a worker. `dask_setup` (a worker preload) applies `WORKER_MALLOC` with glibc's
``mallopt`` as well, for a server that someone else started before.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from homerank.engine.memory import REUSED_BELOW, TRIMMED_ABOVE, reuse_large_allocations

log = logging.getLogger(__name__)

StartMethod = Literal["auto", "forkserver", "spawn"]

# glibc's malloc in worker processes: arrays up to 32 MiB come from the heap, and up to 64 MiB of free heap stay
# resident (dask's own MALLOC_TRIM_THRESHOLD_ of 64 KiB also switches off glibc's adaptive mmap threshold, so
# every array above 128 KiB was a fresh mmap: at 10^7 events, 1.43M page faults and 6-9 s of system time)
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": REUSED_BELOW, "MALLOC_TRIM_THRESHOLD_": TRIMMED_ABOVE}

# what the forkserver imports once: dask's worker and every module an ETL task runs (the stage module imports them)
WORKER_MODULES = ("distributed", "homerank.jobs.stage_etl")


def resolve_start_method(setting: StartMethod) -> str:
    """``cluster.start_method`` resolved: 'auto' is 'forkserver' on Linux, else 'spawn'."""
    if setting != "auto":
        return setting
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def worker_environment() -> dict[str, Any]:
    """The environment the local cluster's nannies set before a worker process starts: dask's own
    ``distributed.nanny.pre-spawn-environ`` (one BLAS/OpenMP thread per worker) with `WORKER_MALLOC` in place of
    its MALLOC_TRIM_THRESHOLD_. Measured on 10^7 events, 2 worker processes: minor page faults 1.43M -> 0.26M,
    system time 6.3 -> 3.5-5.5 s (`homerank etl`, 2 cores)."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    return {**environ, **WORKER_MALLOC}


def start_forkserver(environment: Mapping[str, Any]) -> None:
    """Start this process's forkserver, if it is not running yet, with ``environment`` (the workers' variables) set
    and `WORKER_MODULES` preloaded; this process's own environment is left as it was. Returns at once: the server
    imports while this process goes on."""
    with environment_restored(environment):
        os.environ.update({key: str(value) for key, value in environment.items()})
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(WORKER_MODULES))  # no effect once the server runs
        multiprocessing.forkserver.ensure_running()  # the server is spawned here, with this environment


@contextlib.contextmanager
def environment_restored(keys: Iterable[str]) -> Iterator[None]:
    """Put back this process's values of the variables ``keys`` (unset ones unset) on leaving the block. dask's nanny
    sets the workers' variables (`worker_environment`, and PYTHONHASHSEED) in the job's own process before it starts
    a worker, so without this a later stage of `homerank run` in the same process saw OMP_NUM_THREADS=1: torch,
    imported after the ETL's cluster, trained on one thread (measured: ``torch.get_num_threads()`` 1 instead of 2)."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def apply_worker_malloc() -> bool:
    """`WORKER_MALLOC` through glibc's ``mallopt`` in this process (`homerank.engine.memory.reuse_large_allocations`);
    False (nothing changed) without glibc."""
    return reuse_large_allocations()


def dask_setup(worker: Any) -> None:
    """dask's preload hook: runs in every worker process of a local cluster as it starts (``distributed.worker
    .preload`` names this module): the malloc settings, and dask's traceback record of a task that met a user's
    mistake left out (`homerank.engine.errors.quiet_user_error_tasks`)."""
    from homerank.engine.errors import quiet_user_error_tasks

    quiet_user_error_tasks()
    if not apply_worker_malloc():
        log.debug("dask: worker %s keeps its malloc settings (no glibc mallopt)", getattr(worker, "name", "?"))
