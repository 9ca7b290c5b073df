"""A dask worker process killed in the middle of the ETL does not fail the job, and the outputs equal those of an
undisturbed run: every task of the partitioned ETL is a pure function of its inputs (quarantine parts and counts
are rewritten whole by a retried piece), so dask recomputes what the dead worker held."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

ARGS = ["--device", "cpu", "--quiet", "--set", "cluster.processes=true", "--set", "cluster.n_workers=2",
        "--set", "cluster.threads_per_worker=1", "--set", "ingest.partition_rows=5000",
        "--set", "interactions.min_user_interactions=3", "--set", "interactions.min_item_interactions=3"]


def etl(events: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "homerank", "etl", "--input", str(events), "--out", str(out),
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def dask_workers(parent: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(parent).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    workers = []
    for child in children:
        try:  # a child that just ended (a zombie until reaped) or is gone has no command line: not a worker
            command = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if "resource_tracker" in command:
            continue
        # spawned workers run multiprocessing's spawn_main; with a forkserver (cluster.start_method auto on Linux)
        # the workers are forks of the server, its children, and carry its command line
        if "spawn_main" in command or ("forkserver" in command and child.ppid() != parent):
            workers.append(child)
    return workers


@pytest.mark.slow
@pytest.mark.parametrize("intermediates", ["memory", "disk"])
def test_a_killed_worker_does_not_change_the_etl(tiny_log, tmp_path, intermediates):
    """With the intermediates on disk (homerank.engine.intermediates) a worker killed while it writes them leaves a
    partial file that the retried task writes again whole."""
    from homerank.jobs.cli import main

    # the undisturbed reference runs in this process on worker threads (no process to start, no worker to kill):
    # the tasks are pure functions of their inputs, so threads and processes write the same outputs
    threads = [arg.replace("cluster.processes=true", "cluster.processes=false") for arg in ARGS]
    assert main(["etl", "--input", str(tiny_log / "events"), "--out", str(tmp_path / "calm"), *threads]) == 0
    job = etl(tiny_log / "events", tmp_path / "killed", "--set", f"cluster.intermediates={intermediates}")
    staging = tmp_path / "killed" / ".etl.staging" / ".quarantine.staging" / "_counts"
    killed = None
    deadline = time.monotonic() + 240
    while job.poll() is None and time.monotonic() < deadline:
        workers = dask_workers(job.pid)
        if len(workers) == 2 and staging.is_dir() and any(staging.glob("*.json")):  # the ingest is under way
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    assert killed is not None, "the ETL ended before a worker could be killed"
    assert job.wait(timeout=300) == 0, job.stderr.read()
    for name in ("etl/edges", "etl/interactions", "user_index.parquet", "item_index.parquet", "quarantine"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "calm" / name),
                                      pd.read_parquet(tmp_path / "killed" / name))
