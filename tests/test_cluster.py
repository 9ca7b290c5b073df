"""The job's dask cluster: memory limit and spill directory reach the workers, and the shuffle method follows
where the rows live (tasks inside one process, p2p between processes) unless the config names one."""

from __future__ import annotations

import sys

import dask
import pytest
from pydantic import ValidationError

from homerank.engine import backend as backend_module
from homerank.engine.backend import CPU
from homerank.jobs.cluster import dask_client, shuffle_method
from homerank.jobs.config import ClusterConfig


def test_memory_limit_and_spill_directory_reach_the_workers(tmp_path):
    config = ClusterConfig(n_workers=1, threads_per_worker=1, memory_limit="1GiB", local_directory=str(tmp_path))
    with dask_client(config, CPU) as client:
        workers = client.scheduler_info()["workers"].values()
        assert [w["memory_limit"] for w in workers] == [2**30]
        assert dask.config.get("dataframe.shuffle.method") == "tasks"
    assert any(tmp_path.iterdir())  # the worker's scratch space lives in local_directory


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, "tasks"),
    ({"processes": True}, "p2p"),
    ({"address": "tcp://10.0.0.5:8786"}, "p2p"),
    ({"processes": True, "shuffle": "tasks"}, "tasks"),
    ({"shuffle": "disk"}, "disk"),
])
def test_shuffle_method(settings, expected):
    assert shuffle_method(ClusterConfig(**settings), CPU) == expected


def test_processes_auto_picks_worker_processes_for_a_log_too_large_for_one_process(tmp_path):
    import pandas as pd

    from homerank.jobs.cluster import (
        PROCESSES_ABOVE_SHARE,
        THREADS_PER_CSV_BYTE,
        THREADS_PER_PARQUET_BYTE,
        choose_processes,
    )

    folder = tmp_path / "log"
    folder.mkdir()
    pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "event_type": ["view", "view"],
                  "timestamp": [1, 2]}).to_parquet(folder / "a.parquet")
    (folder / "b.csv").write_text("user_id,item_id,event_type,timestamp\n1,3,view,1\n")
    size = (folder / "a.parquet").stat().st_size * THREADS_PER_PARQUET_BYTE + \
        (folder / "b.csv").stat().st_size * THREADS_PER_CSV_BYTE
    threshold = int(size / PROCESSES_ABOVE_SHARE)
    assert choose_processes("auto", str(folder), memory_bytes=threshold - 1) is True
    assert choose_processes("auto", str(folder), memory_bytes=threshold + 1) is False
    # a big machine: threads only while the job's process would stay under client_bytes
    assert choose_processes("auto", str(folder), memory_bytes=2**40, client_bytes=size - 1) is True
    assert choose_processes("auto", str(folder), memory_bytes=2**40, client_bytes=size + 1) is False
    assert choose_processes("auto", str(folder), memory_bytes=2**40) is False  # a tiny log: threads
    assert choose_processes(False, str(folder), memory_bytes=1) is False  # an explicit setting stands
    assert choose_processes(True, None) is True
    assert choose_processes("auto", None) is False  # no log (the rank stage's cluster): threads
    assert choose_processes("auto", str(folder), "lightgcn", memory_bytes=1) is False


def test_a_bad_shuffle_name_is_a_config_error():
    with pytest.raises(ValueError, match="shuffle"):
        ClusterConfig(shuffle="hash")


def test_a_cluster_that_does_not_stop_in_time_is_a_warning_not_a_failure(monkeypatch, caplog):
    """The job's outputs exist once the client block ends: a slow shutdown must not turn it into exit 1."""
    from distributed import LocalCluster

    def slow_close(self, timeout=None):  # noqa: ANN001
        LocalCluster._real_close(self, timeout=timeout)
        raise TimeoutError

    monkeypatch.setattr(LocalCluster, "_real_close", LocalCluster.close, raising=False)
    monkeypatch.setattr(LocalCluster, "close", slow_close)
    with caplog.at_level("WARNING", logger="homerank.jobs.cluster"), \
            dask_client(ClusterConfig(n_workers=1, threads_per_worker=1), CPU) as client:
        assert client.submit(sum, [1, 2]).result() == 3
    assert "did not stop within" in caplog.text


@pytest.mark.parametrize(("cores", "given", "expected"), [
    (16, (None, None, False), (1, 8)),  # threads: one worker, a thread per core, at most MAX_THREADS
    (2, (None, None, False), (1, 2)),
    (16, (None, 4, False), (1, 4)),
    (16, (None, None, True), (16, 1)),  # processes: one per core
    (16, (None, 4, True), (4, 4)),  # threads per worker given: cores / threads workers
    (16, (3, None, False), (3, None)),  # workers given: dask picks the threads
    (2, (5, 2, True), (5, 2)),
])
def test_default_workers(monkeypatch, cores, given, expected):
    monkeypatch.setattr(backend_module.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert backend_module.default_workers(*given) == expected
    assert backend_module.MAX_THREADS == 8


def _malloc_environment() -> tuple[str | None, str | None, str]:
    import os

    import pyarrow

    return (os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            pyarrow.default_memory_pool().backend_name)


def _saturation(dask_scheduler) -> float:  # noqa: ANN001 - the scheduler, passed by name by run_on_scheduler
    return dask_scheduler.WORKER_SATURATION


def test_worker_processes_start_with_the_malloc_settings_and_take_one_task_per_thread():
    config = ClusterConfig(n_workers=1, threads_per_worker=1, processes=True, memory_limit="1GiB")
    with dask_client(config, CPU) as client:
        (environment,) = client.run(_malloc_environment).values()
        assert client.run_on_scheduler(_saturation) == 1.0
    assert dask.config.get("distributed.scheduler.worker-saturation") == 1.1  # dask's default, outside the cluster
    assert environment == (str(32 << 20), str(64 << 20), "system")  # Arrow's buffers too, as in the client
    assert backend_module.worker_environment()["OMP_NUM_THREADS"] == 1  # dask's own settings are kept
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"] == 65536  # untouched


LOADED = ("sorted(m for m in ('homerank.jobs.stage_etl', 'homerank.engine.worker_processes') "
          "if m in __import__('sys').modules)")


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_worker_processes_start_by_the_configured_method(method):
    """forkserver: the worker comes with the ETL's modules imported (forked from the server that preloaded them);
    spawn: a fresh interpreter that has imported only dask's worker and the preload (`eval` of a string, so that
    nothing of this test module is imported on the worker to ask)."""
    config = ClusterConfig(n_workers=1, threads_per_worker=1, processes=True, start_method=method)
    with dask_client(config, CPU) as client:
        (loaded,) = client.run(eval, LOADED).values()
        (trim,) = client.run(eval, "__import__('os').environ.get('MALLOC_TRIM_THRESHOLD_')").values()
    preloaded = ["homerank.engine.worker_processes", "homerank.jobs.stage_etl"]
    assert loaded == (preloaded if method == "forkserver" else preloaded[:1])
    assert trim == str(64 << 20)


def test_start_method_auto_and_mallopt():
    from homerank.engine.worker_processes import apply_worker_malloc, resolve_start_method

    assert resolve_start_method("spawn") == "spawn"
    assert resolve_start_method("auto") == ("forkserver" if sys.platform.startswith("linux") else "spawn")
    assert apply_worker_malloc() is sys.platform.startswith("linux")  # glibc here; the settings are the workers'
    with pytest.raises(ValidationError):
        ClusterConfig(start_method="fork")  # forking the job's process hung the ETL: not offered


def test_the_jobs_own_environment_is_left_as_it_was(monkeypatch):
    """dask's nannies set the workers' variables in the job's process; a later stage in the same process (torch,
    imported after the ETL's cluster) must not inherit OMP_NUM_THREADS=1 from them. The forkserver, started
    early, gets the workers' variables without this process keeping them."""
    import os

    from homerank.engine.worker_processes import start_forkserver, worker_environment

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # (a value set here would win: dask passes it on)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    before = {key: os.environ.get(key) for key in [*worker_environment(), "PYTHONHASHSEED"]}
    start_forkserver(worker_environment())
    config = ClusterConfig(n_workers=1, threads_per_worker=1, processes=True)
    with dask_client(config, CPU) as client:
        (omp,) = client.run(eval, "__import__('os').environ.get('OMP_NUM_THREADS')").values()
    assert omp == "1"  # the worker's
    assert {key: os.environ.get(key) for key in before} == before
    assert "OMP_NUM_THREADS" not in os.environ and "MALLOC_TRIM_THRESHOLD_" not in os.environ


def test_the_forkserver_starts_early_only_for_a_local_cluster_of_worker_processes(monkeypatch, tmp_path):
    """`homerank etl`/`run` start the forkserver before their imports only when the ETL will fork workers from
    it: no scheduler address, start method forkserver, worker processes chosen for the log."""
    from homerank.jobs import cluster as cluster_module

    started, chosen = [], {"processes": True}
    monkeypatch.setattr("homerank.engine.worker_processes.start_forkserver", started.append)
    monkeypatch.setattr(cluster_module, "choose_processes", lambda *args, **kwargs: chosen["processes"])
    log = str(tmp_path)
    start = cluster_module.start_workers_early
    assert start(ClusterConfig(address="tcp://10.0.0.5:8786"), "cpu", log) is False
    assert start(ClusterConfig(start_method="spawn"), "cpu", log) is False
    assert start(ClusterConfig(), "cpu", None) is False
    chosen["processes"] = False
    assert start(ClusterConfig(), "cpu", log) is False  # threads for this log
    assert not started
    chosen["processes"] = True
    assert start(ClusterConfig(), "cpu", log) is sys.platform.startswith("linux")
    assert len(started) == int(sys.platform.startswith("linux"))
    assert all(env["MALLOC_TRIM_THRESHOLD_"] == 64 << 20 for env in started)  # with the workers' variables


def test_the_logged_dashboard_link_is_where_the_dashboard_listens(caplog):
    """An in-process cluster's dask link names the machine's network address, where nothing listens (the dashboard
    is bound to localhost): the job logs the address it listens on, and something answers there."""
    import logging
    import socket
    from types import SimpleNamespace
    from urllib.parse import urlparse

    from homerank.jobs.cluster import dashboard_link

    fake = SimpleNamespace(scheduler=SimpleNamespace(http_server=SimpleNamespace(port=4321)))
    assert dashboard_link(fake, "127.0.0.1:0", "http://192.0.2.2:4321/status") == "http://127.0.0.1:4321/status"
    assert dashboard_link(fake, ":8787", "http://host:8787/status") == "http://host:8787/status"
    assert dashboard_link(SimpleNamespace(), "127.0.0.1:0", "dask's") == "dask's"
    config = ClusterConfig(n_workers=1, threads_per_worker=1, processes=False)
    with caplog.at_level(logging.INFO, logger="homerank.jobs.cluster"), dask_client(config, CPU):
        link = next(r.getMessage() for r in caplog.records if "dashboard" in r.getMessage()).split()[-1]
        address = urlparse(link)
        assert address.hostname == "127.0.0.1"
        with socket.create_connection((address.hostname, address.port), timeout=5):
            pass
