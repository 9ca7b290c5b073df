"""Out-of-core ETL (issue 17, item 7): ``homerank etl`` on a log larger than its workers' total memory limit.

``python -m bench out-of-core --events 1e8 --workers 2 --memory-limit 2GiB`` starts a ``LocalCluster`` of the shape
homerank starts itself with ``cluster.processes: true`` (W worker processes, one thread each, ``memory_limit`` each,
a spill directory on local disk, lz4-compressed spill when lz4 is installed), runs the ETL stage as its own process
joined to that cluster through ``cluster.address``, and samples every 5 s:

    client      the RSS of the `homerank etl` process, polled every 0.5 s (flat: only small tables reach it)
    per worker  process memory, managed bytes (dask's ``sizeof`` of the data it holds), of which spilled (sizeof)
                and their compressed bytes on disk
    spill dir   the spill directory's size on disk (every ~30 s)
    status      samples in which a worker was paused (at dask's pause threshold, 80% of its limit), and restarts
                (a worker killed at 95% comes back under a new address)

The JSON holds the phase times read from the stage's log, the peaks, the ETL's own stats and every sample, plus the
machine. The log is generated once per size (`bench.etl_suite.ensure_log`) and reused.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.etl_suite import ROOT, ensure_log, folder_bytes, runner_env, say

DEFAULT_OUT = ROOT / "bench" / "results" / "etl"
SAMPLE_SECONDS = 5.0
CLIENT_POLL_SECONDS = 0.5
SPILL_EVERY_SECONDS = 30.0
PHASES = (("ingest", r"etl: ingest done at ([\d.]+)s"),
          ("weight_aggregate_write_interactions", r"aggregated at ([\d.]+)s"),
          ("kcore", r"etl: k-core \(\d+ rounds\) done at ([\d.]+)s"),
          ("encode_split_write", r"etl: encoded, split and written at ([\d.]+)s"))


def phase_seconds(log_text: str) -> dict[str, float]:
    """Each ETL phase's own seconds from the stage's progress lines (the times they log are cumulative); phases
    whose line is missing (a failed run) are left out."""
    text = re.sub(r"\s+", " ", log_text)  # rich wraps long log lines
    seconds: dict[str, float] = {}
    previous = 0.0
    for name, pattern in PHASES:
        found = re.search(pattern, text)
        if found is None:
            break
        at = float(found.group(1))
        seconds[name] = round(at - previous, 1)
        previous = at
    return seconds


def intermediates_mode(log_text: str) -> str | None:
    """Where the stage kept its intermediates, from its log: "disk", "memory", or None (no such line)."""
    found = re.search(r"intermediates: (Parquet files in|persisted on the workers)", re.sub(r"\s+", " ", log_text))
    if found is None:
        return None
    return "disk" if found.group(1).startswith("Parquet") else "memory"


def worker_sample(metrics: dict[str, Any]) -> list[int]:
    """[process MiB, managed MiB, spilled MiB (sizeof), spilled MiB on disk] of one worker's scheduler metrics."""
    spilled = metrics.get("spilled_bytes", {})
    return [int(metrics.get("memory", 0)) >> 20, int(metrics.get("managed_bytes", 0)) >> 20,
            int(spilled.get("memory", 0)) >> 20, int(spilled.get("disk", 0)) >> 20]


def run_out_of_core(events: int, workers: int, memory_limit: str, data_root: Path, work: Path, json_path: Path,
                    partition_rows: int = 500_000, extra_settings: tuple[str, ...] = (),
                    memory_target: float | None = None) -> dict[str, Any]:
    """One out-of-core run (module docstring); writes ``json_path`` and returns its content.

    ``memory_target``: the share of its limit up to which a worker keeps data in memory before spilling it
    (``distributed.worker.memory.target``, dask's default 0.6; the process-memory spill threshold goes to
    target + 0.1): lower leaves more of the limit to task temporaries and unmanaged memory."""
    import dask
    import psutil
    from dask.utils import parse_bytes
    from distributed import Client

    from bench.machine import machine_info
    from homerank.engine.backend import resolve_backend

    info = ensure_log(data_root, events)
    shutil.rmtree(work, ignore_errors=True)
    spill, run = work / "spill", work / "run"
    spill.mkdir(parents=True)
    log_path = work / "etl.log"
    thresholds = ({} if memory_target is None else
                  {"distributed.worker.memory.target": memory_target,
                   "distributed.worker.memory.spill": min(memory_target + 0.1, 0.79)})
    with dask.config.set(thresholds):  # the nannies hand the config to their worker processes
        # the local cluster homerank itself starts with cluster.processes: true (engine.backend.Backend.local_cluster)
        cluster = resolve_backend("cpu").local_cluster(workers, 1, True, memory_limit=memory_limit,
                                                       local_directory=str(spill))
    client = Client(cluster)
    command = [sys.executable, "-m", "homerank.jobs.cli", "etl", "--input", info["events_dir"], "--out", str(run),
               "--device", "cpu", "--set", "profiles.enabled=false",
               "--set", f"cluster.address={cluster.scheduler_address}",
               "--set", f"ingest.partition_rows={partition_rows}",
               *(part for setting in extra_settings for part in ("--set", setting))]
    say(f"out-of-core: {info['rows']} events, {workers} workers x {memory_limit}: {' '.join(command[1:])}")
    samples: list[list[Any]] = []
    client_peak, spill_peak = 0, 0
    worker_peaks: dict[str, int] = {}  # by address: a restarted worker comes back under a new one
    paused_samples = 0
    started = last_spill = time.perf_counter()
    try:
        with log_path.open("w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=runner_env())
            watched = psutil.Process(process.pid)
            last_sample = -SAMPLE_SECONDS
            while process.poll() is None:
                now = time.perf_counter()
                try:  # the client's RSS every CLIENT_POLL_SECONDS, the workers' metrics every SAMPLE_SECONDS
                    client_rss = watched.memory_info().rss
                except psutil.Error:
                    client_rss = 0
                client_peak = max(client_peak, client_rss)
                if now - started - last_sample < SAMPLE_SECONDS:
                    time.sleep(CLIENT_POLL_SECONDS)
                    continue
                last_sample = now - started
                try:  # a worker being restarted is missing from the metrics for a while: sample what is there
                    current = sorted(client.scheduler_info(n_workers=-1)["workers"].items())
                except Exception as exc:  # noqa: BLE001 - the sampling must never stop the run it watches
                    say(f"out-of-core: no scheduler metrics at {now - started:.0f} s ({type(exc).__name__})")
                    continue
                paused_samples += sum(w.get("status") == "paused" for _, w in current)
                metrics = [w.get("metrics", {}) for _, w in current]
                per_worker = [worker_sample(m) for m in metrics]
                row: list[Any] = [round(now - started), client_rss >> 20, *per_worker]
                for address, worker in current:
                    memory = int(worker.get("metrics", {}).get("memory", 0))
                    worker_peaks[address] = max(worker_peaks.get(address, 0), memory)
                if now - last_spill >= SPILL_EVERY_SECONDS:
                    spill_now = folder_bytes(spill)
                    spill_peak, last_spill = max(spill_peak, spill_now), now
                    row.append(spill_now >> 20)
                    say(f"out-of-core: {row[0]} s, client {row[1]} MiB, workers {[w[0] for w in per_worker]} MiB "
                        f"({len(per_worker)} of {workers} reporting), spill {spill_now >> 20} MiB")
                samples.append(row)
        seconds = time.perf_counter() - started
    finally:
        client.close()
        cluster.close(timeout=120)
    log_text = log_path.read_text()
    stats_file = run / "etl" / "stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else None
    limit = parse_bytes(memory_limit)
    result = {
        "events": info["rows"], "workers": workers, "processes": True, "threads_per_worker": 1,
        "memory_limit_per_worker_bytes": limit, "workers_total_memory_limit_bytes": limit * workers,
        "memory_target": memory_target if memory_target is not None else dask.config.get(
            "distributed.worker.memory.target"),
        "input_parquet_bytes": info["input_bytes"], "command": " ".join(["python", *command[1:]]),
        "exit_status": process.returncode, "process_seconds": round(seconds, 1),
        "phases_seconds": phase_seconds(log_text), "intermediates": intermediates_mode(log_text),
        "client_peak_rss_bytes": client_peak, "workers_peak_process_bytes": list(worker_peaks.values()),
        "spill_directory_peak_bytes_sampled": spill_peak,
        "worker_paused_samples": paused_samples, "worker_restarts": max(0, len(worker_peaks) - workers),
        "etl_stats": stats,
        "samples_note": "[seconds, client MiB, per worker [process MiB, managed MiB (sizeof), of which spilled MiB "
                        "(sizeof), spilled MiB on disk (compressed)], spill directory MiB (every ~30 s)]",
        "samples": samples, "machine": machine_info(("distributed", "lz4")),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    say(f"out-of-core: exit {process.returncode} after {seconds:.0f} s, client peak {client_peak >> 20} MiB, workers "
        f"{[p >> 20 for p in worker_peaks.values()]} MiB, spill peak {spill_peak >> 20} MiB -> {json_path}")
    return result
