"""The whole-pipeline benchmark (issue 18, item 6): every homerank stage on one generated log, each stage as its own
CLI subprocess, with wall seconds and the peak RSS of the stage's process tree, plus the users per second of the
rank and homepage stages against a naive per-user Python loop over the same run's embeddings.

``python -m bench pipeline`` measures one (events, workers) point, ``python -m bench pipeline-scaling`` several
sizes plus the per-stage exponents of time against events and a plot. The log is the ETL suite's cached generated
log (`bench.etl_suite.ensure_log`). See bench/README.md for the JSON keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.etl_runner import high_water_mark
from bench.etl_suite import DEFAULT_DATA, MIB, ROOT, SEED, ensure_log, fit_exponent, say, write_atomic, write_result

DEFAULT_OUT = ROOT / "bench" / "results" / "pipeline"
STAGES = ("etl", "graph", "train", "evaluate", "rank", "homepage")
CONTRACT = ("events", "workers", "stages", "rank_users_per_s", "homepage_users_per_s", "peer", "speedup_vs_peer",
            "client_peak_rss_bytes", "machine", "config")
DEFAULT_EPOCHS = 3
DEFAULT_STEPS_PER_EPOCH = 8
DEFAULT_PEER_USERS = 1_000
POLL_SECONDS = 0.2
PEER_BLAS_THREADS = 1


# --- one stage: a subprocess, its wall time and the peak RSS of its process tree ----------------------------------


def tree_rss(root: Any) -> tuple[int, int, int]:
    """(sum of the RSS of ``root`` and all its descendants at this instant, sum of their PSS, number of processes
    counted). The RSS sum counts a page shared by several processes (a forked worker's inherited memory) once per
    process; the PSS (proportional set size, /proc/PID/smaps_rollup) splits it among them, so its sum is the tree's
    real footprint (0 where the platform has no PSS)."""
    import psutil

    total, proportional, counted = 0, 0, 0
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    for member in members:
        try:
            total += member.memory_info().rss
            counted += 1
        except psutil.Error:  # it ended between the listing and the reading
            continue
        try:
            proportional += getattr(member.memory_full_info(), "pss", 0)
        except (psutil.Error, OSError):
            pass
    return total, proportional, counted


def measure_command(command: list[str], *, log_file: Path, env: dict[str, str] | None = None,
                    cwd: Path = ROOT, poll_seconds: float = POLL_SECONDS) -> dict[str, Any]:
    """Run ``command`` (stdout and stderr to ``log_file``), sampling the RSS of its whole process tree every
    ``poll_seconds``. Returns seconds (wall, from start to exit), peak_rss_bytes (the largest sampled sum, and
    at least the root process's own kernel peak), sampled_peak_pss_bytes (the largest sampled sum of PSS),
    samples, processes (most processes seen at once) and returncode."""
    import psutil

    log_file.parent.mkdir(parents=True, exist_ok=True)
    peak = pss_peak = kernel_peak = samples = most = 0
    with open(log_file, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            root = psutil.Process(process.pid)
            while process.poll() is None:
                rss, pss, counted = tree_rss(root)
                peak, most, samples = max(peak, rss), max(most, counted), samples + 1
                pss_peak = max(pss_peak, pss)
                kernel_peak = max(kernel_peak, (high_water_mark(process.pid) or 0))
                try:
                    process.wait(timeout=poll_seconds)
                except subprocess.TimeoutExpired:
                    pass
        except psutil.NoSuchProcess:  # ended before the first sample
            process.wait()
        finally:
            if process.poll() is None:  # interrupted: do not leave the stage running
                process.kill()
                process.wait()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_bytes": max(peak, kernel_peak), "sampled_peak_rss_bytes": peak,
            "sampled_peak_pss_bytes": pss_peak,
            "root_kernel_peak_bytes": kernel_peak, "samples": samples, "processes": most,
            "returncode": process.returncode}


def homerank_command() -> list[str]:
    """The ``homerank`` console script of this interpreter's environment (else ``python -m homerank.jobs.cli``)."""
    script = Path(sys.executable).with_name("homerank")
    return [str(script)] if script.exists() else [sys.executable, "-m", "homerank.jobs.cli"]


def stage_command(stage: str, run: Path, events_dir: str, first_options: list[str]) -> list[str]:
    """``homerank STAGE --out RUN --quiet``; the first stage also gets ``--input`` and the bench's options, which it
    writes into RUN/config.yaml for the later stages (as a CLI user's run would)."""
    command = [*homerank_command(), stage, "--out", str(run), "--quiet"]
    if stage == STAGES[0]:
        command += ["--input", events_dir, *first_options]
    return command


def overrides(catalogue: Path, workers: int, epochs: int, steps_per_epoch: int,
              processes: bool = False) -> dict[str, Any]:
    """The config keys the bench sets (``--set key=value`` on the first stage). ``workers`` is the ETL's
    parallelism: one dask worker with that many threads (the local cluster's default shape), or with
    ``processes`` that many single-threaded worker processes (the client then holds only small tables)."""
    cluster = ({"cluster.processes": "true", "cluster.n_workers": workers, "cluster.threads_per_worker": 1}
               if processes else {"cluster.n_workers": 1, "cluster.threads_per_worker": workers})
    return {"ingest.catalogue": str(catalogue), **cluster, "train.epochs": epochs,
            "train.steps_per_epoch": steps_per_epoch}


# --- users in the outputs, and the naive peer ----------------------------------------------------------------------


def count_users(dataset: Path) -> int:
    """Distinct user_id values of a Parquet dataset, reading only that column."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    column = ds.dataset(dataset, format="parquet", exclude_invalid_files=True).to_table(columns=["user_id"])
    return int(pc.count_distinct(column["user_id"]).as_py())


def _top_k(scores: Any, k: int) -> Any:
    import numpy as np

    k = min(k, scores.shape[0])
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def peer_loop(user_vectors: Any, item_vectors: Any, seen: list[Any], last_item: list[int], k: int,
              homepage: bool) -> tuple[float, Any]:
    """The naive peer, one user at a time in Python: score the user against every item (``item_vectors`` (I, d) @
    user vector (d,)), mask the user's seen items, top-k; with ``homepage`` also the k items most similar to the
    user's last item (a dense (I, d) @ (d,) product, the item itself masked). Returns (seconds, last result)."""
    import numpy as np

    result = None
    started = time.perf_counter()
    for row in range(user_vectors.shape[0]):
        scores = item_vectors @ user_vectors[row]
        scores[seen[row]] = -np.inf
        result = _top_k(scores, k)
        if homepage:
            similar = item_vectors @ item_vectors[last_item[row]]
            similar[last_item[row]] = -np.inf
            result = (result, _top_k(similar, k))
    return time.perf_counter() - started, result


def run_peer(run: Path, sample: int, k: int) -> dict[str, Any]:
    """The naive peer on ``sample`` users of the run (drawn with the bench's seed from the users with embeddings):
    their final embeddings from ``homerank.Run.open(run).embeddings()``, their seen items and last item from
    ``etl/edges`` (every split), then `peer_loop` for the rank page and for the homepage."""
    import numpy as np
    import pandas as pd

    import homerank

    started = time.perf_counter()
    users, items = homerank.Run.open(run).embeddings()
    rng = np.random.default_rng(SEED)
    pick = np.sort(rng.choice(len(users), size=min(sample, len(users)), replace=False))
    user_ids = users.index[pick]
    user_vectors = np.ascontiguousarray(users.to_numpy(np.float32)[pick])
    item_vectors = np.ascontiguousarray(items.to_numpy(np.float32))
    edges = pd.read_parquet(run / "etl" / "edges", columns=["user_id", "item_id", "last_ts"],
                            filters=[("user_id", "in", user_ids.tolist())])
    edges["item_row"] = items.index.get_indexer(edges["item_id"])
    edges = edges[edges["item_row"] >= 0].sort_values(["user_id", "last_ts"])
    by_user = {user: group["item_row"].to_numpy() for user, group in edges.groupby("user_id", sort=False)}
    empty = np.empty(0, dtype=np.int64)
    seen = [by_user.get(user, empty) for user in user_ids]
    last_item = [int(rows[-1]) if len(rows) else 0 for rows in seen]  # sorted by last_ts: the last one is newest
    load_seconds = time.perf_counter() - started
    # One BLAS thread: an (I, d) @ (d,) product split over threads of a loaded 2-core machine thrashes (measured
    # 4,900 -> 15,000 items: 6,000 -> 100 users/s with 2 threads, 3,800 -> 1,400 with 1), so the peer would
    # look slower than a plain loop is.
    try:
        from threadpoolctl import threadpool_limits

        limits: Any = threadpool_limits(limits=PEER_BLAS_THREADS)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn/scipy stacks
        limits = contextlib.nullcontext()
    with limits:
        rank_seconds, _ = peer_loop(user_vectors, item_vectors, seen, last_item, k, homepage=False)
        homepage_seconds, _ = peer_loop(user_vectors, item_vectors, seen, last_item, k, homepage=True)
    n = len(user_ids)
    return {"rank_users_per_s": n / rank_seconds, "homepage_users_per_s": n / homepage_seconds, "users": n,
            "k": k, "rank_seconds": rank_seconds, "homepage_seconds": homepage_seconds, "load_seconds": load_seconds,
            "items": int(item_vectors.shape[0]), "dim": int(item_vectors.shape[1]),
            "blas_threads": PEER_BLAS_THREADS if not isinstance(limits, contextlib.nullcontext) else None}


# --- one point -----------------------------------------------------------------------------------------------------


def result_name(events: int, workers: int, processes: bool = False) -> str:
    return f"events-{events}-workers-{workers}" + ("-processes" if processes else "")


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pipeline_point(events: int, workers: int, *, epochs: int = DEFAULT_EPOCHS,
                   steps_per_epoch: int = DEFAULT_STEPS_PER_EPOCH, peer_users: int = DEFAULT_PEER_USERS,
                   device: str = "auto", data_root: Path = DEFAULT_DATA, keep_run: bool = True,
                   processes: bool = False) -> dict[str, Any]:
    """One benchmark point: the JSON contract of ``python -m bench pipeline`` (see bench/README.md). The run
    directory is ``DATA/pipeline/events-N-workers-W/run`` (made afresh; kept for inspection unless ``keep_run`` is
    false), each stage's output in ``.../logs/STAGE.log``."""
    from bench.machine import machine_info

    data_root = Path(data_root)
    log_info = ensure_log(data_root, events)
    folder = data_root / "pipeline" / result_name(events, workers, processes)
    run = folder / "run"
    shutil.rmtree(folder, ignore_errors=True)
    config = overrides(data_root / f"events-{events}" / "items.parquet", workers, epochs, steps_per_epoch, processes)
    first_options = ["--device", device]
    for key, value in config.items():
        first_options += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    load_start = _load()
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        command = stage_command(stage, run, log_info["events_dir"], first_options)
        say(f"{stage}: {' '.join(command)}")
        measured = measure_command(command, log_file=folder / "logs" / f"{stage}.log", env=env)
        if measured["returncode"] != 0:
            tail = (folder / "logs" / f"{stage}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"bench pipeline: `homerank {stage}` failed (exit {measured['returncode']}); command: "
                             f"{' '.join(command)}\n{tail}")
        stages[stage] = measured
        say(f"{stage}: {measured['seconds']:.1f}s, peak RSS {measured['peak_rss_bytes'] / MIB:.0f} MiB "
            f"({measured['processes']} process(es) at most)")
    load_end = _load()
    timings = json.loads((run / "logs" / "timings.json").read_text())
    for stage, measured in stages.items():
        own = timings.get(stage)
        measured["own_seconds"] = own
        measured["overhead_seconds"] = None if own is None else measured["seconds"] - own
    rank_users = count_users(run / "rankings")
    homepage_users = count_users(run / "homepage")
    k = int(_run_config(run).rank.k)
    say(f"peer: naive per-user loop over {peer_users} users, k={k}")
    peer = run_peer(run, peer_users, k)
    say(f"peer: rank {peer['rank_users_per_s']:.0f} users/s, homepage {peer['homepage_users_per_s']:.0f} users/s")
    ours_rank = rank_users / stages["rank"]["seconds"]
    ours_homepage = homepage_users / stages["homepage"]["seconds"]
    own_rank = rank_users / stages["rank"]["own_seconds"] if stages["rank"]["own_seconds"] else None
    own_homepage = (homepage_users / stages["homepage"]["own_seconds"] if stages["homepage"]["own_seconds"]
                    else None)
    train_summary = run / "train" / "summary.json"
    result: dict[str, Any] = {
        "events": events,
        "workers": workers,
        "etl_processes": processes,
        "stages": {stage: {"seconds": m["seconds"], "peak_rss_bytes": m["peak_rss_bytes"],
                           "peak_pss_bytes": m["sampled_peak_pss_bytes"],
                           "process_peak_rss_bytes": m["root_kernel_peak_bytes"],
                           "own_seconds": m["own_seconds"], "overhead_seconds": m["overhead_seconds"]}
                   for stage, m in stages.items()},
        "rank_users_per_s": ours_rank,
        "homepage_users_per_s": ours_homepage,
        "peer": peer,
        "speedup_vs_peer": {"rank": ours_rank / peer["rank_users_per_s"],
                            "homepage": ours_homepage / peer["homepage_users_per_s"]},
        "client_peak_rss_bytes": max(m["peak_rss_bytes"] for m in stages.values()),
        "client_peak_pss_bytes": max(m["sampled_peak_pss_bytes"] for m in stages.values()),
        "process_peak_rss_bytes": max(m["root_kernel_peak_bytes"] for m in stages.values()),
        "machine": machine_info(("distributed", "psutil", "pyarrow", "faiss-cpu")),
        "config": {**config, "device": device},
        "total_seconds": sum(m["seconds"] for m in stages.values()),
        "users": {"rank": rank_users, "homepage": homepage_users},
        "own_clock": {"rank_users_per_s": own_rank, "homepage_users_per_s": own_homepage,
                      "speedup_vs_peer": {
                          "rank": own_rank / peer["rank_users_per_s"] if own_rank else None,
                          "homepage": own_homepage / peer["homepage_users_per_s"] if own_homepage else None}},
        "measurement": {stage: {key: m[key] for key in ("sampled_peak_rss_bytes", "root_kernel_peak_bytes",
                                                         "samples", "processes")} for stage, m in stages.items()},
        "poll_seconds": POLL_SECONDS,
        "load_average": {"start": load_start, "end": load_end},
        "train": json.loads(train_summary.read_text()) if train_summary.exists() else None,
        "input_rows": log_info["rows"],
        "input_bytes": log_info["input_bytes"],
        "synthetic_spec": log_info["spec"],
        "input": log_info["events_dir"],
        "run": str(run),
    }
    if not keep_run:
        shutil.rmtree(run, ignore_errors=True)
    return result


def _run_config(run: Path) -> Any:
    import homerank

    return homerank.Run.open(run).config


def point_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [f"# Pipeline benchmark: {result['events']} events, {result['workers']} worker(s)", "",
             f"Input: {result['input_rows']} rows ({result['input_bytes'] / MIB:.1f} MiB of Parquet); "
             f"train.epochs={cfg['train.epochs']}, train.steps_per_epoch={cfg['train.steps_per_epoch']}, "
             f"device {cfg['device']}. Each stage is `homerank STAGE --out RUN` in its own process; load average "
             f"at start / end {result['load_average']['start']} / {result['load_average']['end']}.", "",
             "| stage | wall s | stage's own clock s | start-up and rest s | peak RSS (MiB) | peak PSS (MiB) |",
             "|---|---|---|---|---|---|"]
    for stage, m in result["stages"].items():
        own = f"{m['own_seconds']:.2f}" if m["own_seconds"] is not None else "n/a"
        rest = f"{m['overhead_seconds']:.2f}" if m["overhead_seconds"] is not None else "n/a"
        pss = f"{m['peak_pss_bytes'] / MIB:.0f}" if m.get("peak_pss_bytes") else "n/a"
        lines.append(f"| {stage} | {m['seconds']:.2f} | {own} | {rest} | {m['peak_rss_bytes'] / MIB:.0f} | {pss} |")
    peer, own = result["peer"], result["own_clock"]
    pss = (f" (peak PSS {result['client_peak_pss_bytes'] / MIB:.0f} MiB: shared pages counted once)"
           if result.get("client_peak_pss_bytes") else "")
    lines += ["", f"Total {result['total_seconds']:.1f}s; largest stage peak RSS "
                  f"{result['client_peak_rss_bytes'] / MIB:.0f} MiB{pss}.", "",
              "| page | users | homerank users/s (wall) | homerank users/s (own clock) | naive peer users/s | "
              "speedup (wall) | speedup (own clock) |", "|---|---|---|---|---|---|---|"]
    for page in ("rank", "homepage"):
        own_rate, own_speedup = own[f"{page}_users_per_s"], own["speedup_vs_peer"][page]
        lines.append(f"| {page} | {result['users'][page]} | {result[f'{page}_users_per_s']:.0f} | "
                     f"{own_rate:.0f} | {peer[f'{page}_users_per_s']:.0f} | {result['speedup_vs_peer'][page]:.3g} | "
                     f"{own_speedup:.3g} |" if own_rate else
                     f"| {page} | {result['users'][page]} | {result[f'{page}_users_per_s']:.0f} | n/a | "
                     f"{peer[f'{page}_users_per_s']:.0f} | {result['speedup_vs_peer'][page]:.3g} | n/a |")
    lines += ["",
              f"Peer: a Python loop over {peer['users']} sampled users scoring each against all {peer['items']} "
              f"items with the run's final embeddings (d={peer['dim']}), seen items masked, top-{peer['k']}; for "
              "the homepage also the top-k items most similar to the user's last item (dense dot product). It does "
              "far less than the stages (no popularity fallback, no blend scorer, no sections, rules or writing) "
              "and its time excludes process start-up and loading. Speedup > 1 means homerank is faster; the wall "
              "figure includes each stage's process start-up (imports) and report writing.",
              "", f"Machine: `{json.dumps(result['machine'])}`"]
    return "\n".join(lines) + "\n"


def write_point(result: dict[str, Any], json_path: Path) -> None:
    write_result(result, json_path, point_markdown)


# --- scaling -------------------------------------------------------------------------------------------------------


def _fit(points: list[tuple[int, float | None]]) -> dict[str, Any]:
    points = [(n, s) for n, s in points if s is not None and s > 0]
    sizes = [n for n, _ in points]
    if len(set(sizes)) < 2:
        return {"exponent": None, "sizes": sizes, "why": "needs at least two sizes"}
    return {"exponent": fit_exponent(sizes, [s for _, s in points]), "sizes": sizes}


def scaling_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage, the exponent b of time ~ events^b (least squares on log-log) over the points, for the wall
    seconds and for the stage's own clock (without process start-up), and for the whole pipeline."""
    results = sorted(results, key=lambda r: r["events"])
    exponents = {stage: _fit([(r["events"], r["stages"][stage]["seconds"]) for r in results]) for stage in STAGES}
    own = {stage: _fit([(r["events"], r["stages"][stage].get("own_seconds")) for r in results]) for stage in STAGES}
    total = _fit([(r["events"], sum(r["stages"][s]["seconds"] for s in STAGES)) for r in results])
    return {"sizes": [r["events"] for r in results], "exponents": exponents, "exponents_own_clock": own,
            "total_exponent": total}


def scaling_markdown(scaling: dict[str, Any]) -> str:
    runs = scaling["runs"]
    lines = [f"# Pipeline scaling ({scaling['workers']} worker(s))", "",
             "Wall seconds per stage (each stage its own `homerank` process) and peak RSS of its process tree:", "",
             "| events | " + " | ".join(f"{s} s" for s in STAGES) + " | total s | largest RSS MiB | largest PSS MiB "
             "| rank users/s (peer) | homepage users/s (peer) |", "|---" * (len(STAGES) + 6) + "|"]
    for r in runs:
        pss = f"{r['client_peak_pss_bytes'] / MIB:.0f}" if r.get("client_peak_pss_bytes") else "n/a"
        lines.append(f"| {r['events']} | " + " | ".join(f"{r['stages'][s]['seconds']:.1f}" for s in STAGES)
                     + f" | {r['total_seconds']:.1f} | {r['client_peak_rss_bytes'] / MIB:.0f} | {pss} | "
                       f"{r['rank_users_per_s']:.0f} ({r['peer']['rank_users_per_s']:.0f}) | "
                       f"{r['homepage_users_per_s']:.0f} ({r['peer']['homepage_users_per_s']:.0f}) |")
    lines += ["", "The stage's own clock (`RUN/logs/timings.json`, without process start-up):", "",
              "| events | " + " | ".join(f"{s} s" for s in STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    for r in runs:
        lines.append(f"| {r['events']} | " + " | ".join(
            f"{r['stages'][s]['own_seconds']:.1f}" if r["stages"][s]["own_seconds"] is not None else "n/a"
            for s in STAGES) + " |")
    lines += ["", "Time grows like events^b (least squares on log-log):", "",
              "| stage | b (wall) | b (own clock) |", "|---|---|---|"]
    for stage in STAGES:
        wall, own = scaling["exponents"][stage]["exponent"], scaling["exponents_own_clock"][stage]["exponent"]
        lines.append(f"| {stage} | {'n/a' if wall is None else f'{wall:.2f}'} | "
                     f"{'n/a' if own is None else f'{own:.2f}'} |")
    total = scaling["total_exponent"]["exponent"]
    lines += [f"| all stages | {'n/a' if total is None else f'{total:.2f}'} | |", "",
              f"Plot: `{scaling['plot']}`" if scaling.get("plot") else "",
              "", f"Machine: `{json.dumps(scaling['machine'])}`"]
    return "\n".join(lines) + "\n"


def write_plot(scaling: dict[str, Any], path: Path) -> str:
    """Seconds per stage vs events on log-log axes: wall (left) and the stage's own clock (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(scaling["runs"], key=lambda r: r["events"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, key, fits, title in ((axes[0], "seconds", scaling["exponents"], "wall (own process, start-up included)"),
                                 (axes[1], "own_seconds", scaling["exponents_own_clock"], "stage's own clock")):
        for stage in STAGES:
            points = [(r["events"], r["stages"][stage][key]) for r in runs if r["stages"][stage].get(key)]
            if not points:
                continue
            b = fits[stage]["exponent"]
            ax.plot([n for n, _ in points], [s for _, s in points], "o-",
                    label=stage + (f" (b={b:.2f})" if b is not None else ""))
        ax.set(xscale="log", yscale="log", xlabel="events", ylabel="seconds", title=f"Pipeline stages: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path.name


def run_scaling(sizes: list[int], workers: int, *, epochs: int = DEFAULT_EPOCHS,
                steps_per_epoch: int = DEFAULT_STEPS_PER_EPOCH, peer_users: int = DEFAULT_PEER_USERS,
                device: str = "auto", data_root: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT,
                keep_run: bool = False, reuse: bool = False) -> dict[str, Any]:
    """`pipeline_point` for every size (with ``reuse``, a point whose ``OUT/events-N-workers-W.json`` exists is
    read back instead of run again), then ``scaling.json``, ``scaling.md`` and ``time_vs_events.png``."""
    from bench.machine import machine_info

    started = time.perf_counter()
    out = Path(out)
    results = []
    for step, n in enumerate(sorted(sizes), 1):
        path = out / f"{result_name(n, workers)}.json"
        if reuse and path.exists():
            say(f"=== pipeline point {step}/{len(sizes)}: reusing {path} ===")
            results.append({**json.loads(path.read_text()), "file": path.name})
            continue
        say(f"=== pipeline point {step}/{len(sizes)}: {n} events, {workers} worker(s) ===")
        result = pipeline_point(n, workers, epochs=epochs, steps_per_epoch=steps_per_epoch, peer_users=peer_users,
                                device=device, data_root=data_root, keep_run=keep_run)
        write_point(result, path)
        results.append({**result, "file": path.name})
    scaling = scaling_summary(results)
    keep = ("events", "workers", "stages", "rank_users_per_s", "homepage_users_per_s", "speedup_vs_peer",
            "client_peak_rss_bytes", "client_peak_pss_bytes", "config", "total_seconds", "users", "load_average",
            "file")
    scaling.update({
        "workers": workers,
        "runs": [{**{k: r.get(k) for k in keep}, "peer": {k: r["peer"][k] for k in ("rank_users_per_s",
                                                                               "homepage_users_per_s")}}
                 for r in results],
        "machine": machine_info(("distributed", "psutil", "pyarrow", "faiss-cpu")),
        "total_seconds": time.perf_counter() - started,
    })
    out.mkdir(parents=True, exist_ok=True)
    scaling["plot"] = write_plot(scaling, out / "time_vs_events.png")
    write_atomic(out / "scaling.json", json.dumps(scaling, indent=2) + "\n")
    write_atomic(out / "scaling.md", scaling_markdown(scaling))
    say(f"wrote {out / 'scaling.json'}, scaling.md and {scaling['plot']} in {scaling['total_seconds']:.0f}s")
    return scaling

