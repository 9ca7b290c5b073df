"""One engine's ETL in a process of its own, so that its peak memory is its own (run by ``python -m bench etl``).

The core work, identical for the three engines: read the Parquet log, drop rows with null ids / unknown event
type / null timestamp, drop exact duplicates, weight events, aggregate to one edge per (user, item) with weight
sum, first/last time and per-type counts, iterated k-core (5, 5). homerank runs its whole ``etl`` stage as the
CLI does (``run_stage``), which does more on top: row-level quarantine with reasons and provenance, the temporal
split with a second aggregation pass, mapping tables, atomic writes.

    python -m bench.etl_runner --engine homerank|pandas|polars --input DIR/events --workers W [--processes]
                               [--threads-per-worker T] [--repeat R] --result FILE

Times the core work inside this process (``time.perf_counter``; imports and start-up are not timed, homerank's
local dask cluster start is, as the CLI pays it) and samples memory with psutil in a background thread every
``--interval`` seconds: this process's RSS, and the SUM of the RSS of all its descendant processes (dask worker
processes with ``--processes``). Writes FILE (JSON). Run it from the repository root (``bench`` is not installed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0}
TYPES = list(WEIGHTS)
K = 5
ENGINES = ("homerank", "pandas", "polars")


def pandas_etl(events_dir: Path) -> tuple[int, dict[str, Any]]:
    import pandas as pd

    frame = pd.read_parquet(events_dir)
    frame = frame.dropna(subset=["user_id", "item_id", "timestamp"])
    frame = frame[frame["event_type"].isin(TYPES)].drop_duplicates()
    frame["weight"] = frame["event_type"].map(WEIGHTS).astype("float64")
    for t in TYPES:
        frame[f"n_{t}"] = (frame["event_type"] == t).astype("int64")
    edges = frame.groupby(["user_id", "item_id"], sort=False).agg(
        weight=("weight", "sum"), first_ts=("timestamp", "min"), last_ts=("timestamp", "max"),
        **{f"n_{t}": (f"n_{t}", "sum") for t in TYPES}).reset_index()
    while True:
        users = edges["user_id"].value_counts()
        items = edges["item_id"].value_counts()
        mask = edges["user_id"].isin(users.index[users >= K]) & edges["item_id"].isin(items.index[items >= K])
        if mask.all():
            return len(edges), {}
        edges = edges[mask]


def polars_etl(events_dir: Path) -> tuple[int, dict[str, Any]]:
    import polars as pl

    frame = (
        pl.scan_parquet(str(events_dir / "*.parquet"))
        .drop_nulls(["user_id", "item_id", "timestamp"])
        .filter(pl.col("event_type").is_in(TYPES))
        .unique()
        .with_columns(pl.col("event_type").replace_strict(WEIGHTS, return_dtype=pl.Float64).alias("weight"))
        .group_by(["user_id", "item_id"])
        .agg(pl.col("weight").sum(), pl.col("timestamp").min().alias("first_ts"),
             pl.col("timestamp").max().alias("last_ts"),
             *[(pl.col("event_type") == t).sum().alias(f"n_{t}") for t in TYPES])
        .collect()
    )
    while True:
        users = frame.group_by("user_id").len().filter(pl.col("len") >= K)["user_id"]
        items = frame.group_by("item_id").len().filter(pl.col("len") >= K)["item_id"]
        kept = frame.filter(pl.col("user_id").is_in(users.implode()) & pl.col("item_id").is_in(items.implode()))
        if kept.height == frame.height:
            return kept.height, {}
        frame = kept


def homerank_etl(events_dir: Path, workers: int, processes: bool, threads_per_worker: int | None,
                 scratch: Path | None) -> tuple[int, dict[str, Any]]:
    """The ``etl`` stage exactly as ``homerank etl --device cpu`` runs it, into a temporary run directory."""
    from homerank.engine.backend import resolve_backend
    from homerank.jobs.config import JobConfig
    from homerank.jobs.pipeline import run_stage
    from homerank.jobs.rundir import RunDir

    cluster: dict[str, Any] = {"n_workers": workers, "processes": processes}
    if threads_per_worker:
        cluster["threads_per_worker"] = threads_per_worker
    if not processes:  # threads: W workers' worth of threads in one worker, the shape of the product's default
        cluster.update(n_workers=1, threads_per_worker=workers * (threads_per_worker or 1))
    # the peers compute the edges only: the per-user summaries the ETL also writes (profiles, and each user's last
    # session, both under `profiles`) are left out
    config = JobConfig(device="cpu", cluster=cluster, profiles={"enabled": False, "last_session": False})
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    run_root = Path(tempfile.mkdtemp(prefix="homerank-etl-", dir=scratch))
    try:
        stats = run_stage("etl", RunDir(run_root / "run"), config, resolve_backend("cpu"), str(events_dir),
                          show_progress=False)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    # the stage's own clock (no cluster start/stop): tells the cluster's fixed cost apart from the work
    return int(stats["kcore"]["edges"]), {"stage_seconds": stats.get("seconds"), "input_rows": stats.get("rows")}


def high_water_mark(pid: int | str = "self") -> int | None:
    """The kernel's peak RSS of a process since its exec (``VmHWM`` in /proc/PID/status), bytes; None off Linux.
    Unlike ``getrusage``'s ru_maxrss it does not inherit the parent's peak across fork + exec."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemorySampler:
    """Background thread sampling RSS every ``interval`` seconds: this process, the sum over its descendants,
    and both together (all at the same instant). Peaks only; bytes.

    The descendants are listed afresh every ``list_every`` seconds (and at the first and last sample), not at every
    sample: psutil finds them by reading every process's /proc/PID/stat in Python, ~9 ms a time here, which at 10
    samples a second took ~9% of a core and held the GIL against the engine's own threads (homerank's threaded dask
    worker, pandas). Between two listings the known descendants' RSS is read at every sample, and each one's kernel
    peak (``VmHWM``) covers what the samples miss; a worker started between listings is counted from the next one."""

    def __init__(self, interval: float = 0.1, list_every: float = 1.0) -> None:
        self.interval = interval
        self.list_every = list_every
        self._children: list[psutil.Process] = []
        self._listed_at = -math.inf
        self.process = psutil.Process()
        self.own_peak = 0
        self.descendants_peak = 0
        self.tree_peak = 0
        self.max_descendants = 0
        self.samples = 0
        self.child_hwm: dict[int, int] = {}  # pid -> the kernel's peak RSS of that descendant (VmHWM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def sample(self, list_children: bool = False) -> None:
        now = time.monotonic()
        if list_children or now - self._listed_at >= self.list_every:
            self._children, self._listed_at = self.process.children(recursive=True), now
        own = self.process.memory_info().rss
        descendants, alive = 0, 0
        for child in self._children:
            try:
                descendants += child.memory_info().rss
                alive += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # a worker that just exited
            hwm = high_water_mark(child.pid)
            if hwm is not None:
                self.child_hwm[child.pid] = max(self.child_hwm.get(child.pid, 0), hwm)
        self.own_peak = max(self.own_peak, own)
        self.descendants_peak = max(self.descendants_peak, descendants)
        self.tree_peak = max(self.tree_peak, own + descendants)
        self.max_descendants = max(self.max_descendants, alive)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample(list_children=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample(list_children=True)


def run_engine(engine: str, events_dir: Path, workers: int, processes: bool, threads_per_worker: int | None,
               repeat: int, interval: float, scratch: Path | None) -> dict[str, Any]:
    work: Callable[[], tuple[int, dict[str, Any]]]
    if engine == "pandas":
        import pandas  # noqa: F401  (imported before the clock starts)

        def work() -> tuple[int, dict[str, Any]]:
            return pandas_etl(events_dir)
    elif engine == "polars":
        import polars  # noqa: F401

        def work() -> tuple[int, dict[str, Any]]:
            return polars_etl(events_dir)
    else:
        import homerank.jobs.stage_etl  # noqa: F401  (the stage's imports: dask.dataframe & co.)
        from homerank.jobs.hygiene import quiet_library_warnings
        from homerank.jobs.pipeline import run_stage  # noqa: F401

        quiet_library_warnings()

        def work() -> tuple[int, dict[str, Any]]:
            return homerank_etl(events_dir, workers, processes, threads_per_worker, scratch)

    baseline = psutil.Process().memory_info().rss
    seconds: list[float] = []
    extras: list[dict[str, Any]] = []
    edges_seen: set[int] = set()
    with MemorySampler(interval) as memory:
        for attempt in range(1, repeat + 1):
            started = time.perf_counter()
            edges, extra = work()
            seconds.append(time.perf_counter() - started)
            memory.sample()
            edges_seen.add(edges)
            extras.append(extra)
            print(f"[runner {engine}] repeat {attempt}/{repeat}: {seconds[-1]:.2f}s, k-core edges {edges}",
                  flush=True)
    if len(edges_seen) != 1:
        raise RuntimeError(f"{engine}: the k-core edge count changed between repeats: {sorted(edges_seen)}")
    # the kernel's own peak of this process catches a spike between two samples
    own_hwm = high_water_mark() or 0
    result: dict[str, Any] = {"engine": engine, "edges": edges_seen.pop(),
                              **timing_and_memory(seconds, repeat, baseline, memory, own_hwm, interval)}
    result["descendants_peak_rss_bytes"] = memory.descendants_peak
    # each descendant's own kernel peak, summed: an upper bound of descendants_peak_rss_bytes (the peaks need not
    # coincide) that no sampling gap can miss
    result["descendants_hwm_sum_bytes"] = sum(memory.child_hwm.values())
    result["max_descendant_processes"] = memory.max_descendants
    if engine == "homerank":
        result["stage_seconds"] = median_stage_seconds(extras)
        result["input_rows"] = extras[-1].get("input_rows")
        result["workers"], result["processes"], result["threads_per_worker"] = workers, processes, threads_per_worker
    if engine == "polars":
        import polars as pl

        result["threads"] = pl.thread_pool_size()
    if engine == "pandas":
        result["threads"] = 1
    return result


def timing_and_memory(seconds: list[float], repeat: int, baseline: int, memory: MemorySampler, own_hwm: int,
                      interval: float) -> dict[str, Any]:
    """The keys every runner reports: the median and all repeats, and this process's (and its tree's) peak RSS
    from the sampler and the kernel's high-water mark."""
    return {
        "seconds": statistics.median(seconds),
        "seconds_all": seconds,
        "repeat": repeat,
        "baseline_rss_bytes": baseline,
        "own_peak_rss_bytes": max(memory.own_peak, own_hwm),
        "own_sampled_peak_rss_bytes": memory.own_peak,
        "tree_peak_rss_bytes": max(memory.tree_peak, own_hwm),
        "rss_samples": memory.samples,
        "rss_interval_s": interval,
        "pid": os.getpid(),
    }


def median_stage_seconds(extras: list[dict[str, Any]]) -> float | None:
    """The median of homerank's own stage clock over the repeats (None when no repeat reported it)."""
    stage = [e["stage_seconds"] for e in extras if e.get("stage_seconds") is not None]
    return statistics.median(stage) if stage else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--input", required=True, help="the events/ folder (partitioned Parquet)")
    parser.add_argument("--workers", type=int, default=1, help="homerank: dask workers")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--processes", dest="processes", action="store_true", help="homerank: worker processes")
    mode.add_argument("--threads", dest="processes", action="store_false", help="homerank: worker threads (default)")
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="homerank: threads per dask worker; 0 leaves it to dask (cpu_count / workers)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two RSS samples")
    parser.add_argument("--scratch", help="where homerank's temporary run directories go (default: system temp)")
    parser.add_argument("--result", required=True, help="JSON file to write")
    parser.set_defaults(processes=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # distributed logs every p2p shuffle's start and end at WARNING: noise in a benchmark's output
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    result = run_engine(args.engine, Path(args.input), args.workers, args.processes, args.threads_per_worker or None,
                        max(1, args.repeat), args.interval, Path(args.scratch) if args.scratch else None)
    out = Path(args.result)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":  # dask worker processes are spawned: they re-import this module without running it
    sys.exit(main())
