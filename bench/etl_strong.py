"""Strong scaling of homerank's ETL on one log (``python -m bench etl-strong``): the same generated log through the
ETL stage with 1, 2, 4, ... dask workers, each run in a process of its own (`bench.etl_runner`), and the peers that
are installed (pandas in one process; polars when importable) once, in the same run.

For W workers: seconds(W), speedup(W) = seconds(1) / seconds(W), efficiency(W) = speedup(W) / W, and the ratio
to each peer (peer seconds / homerank seconds, > 1: homerank faster). The `etl` command's JSON contract needs
both peers; this one is for machines with more cores than this project's 2-core development machine (e.g. a lent
GPU machine's 16 cores, where polars is not installed), so a missing peer is recorded as skipped.

    python -m bench etl-strong --events 1e7 --workers 1,2,4,8 --processes [--json FILE]
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.etl_suite import DEFAULT_DATA, MIB, PEERS, ensure_log, run_engine, say, write_atomic
from bench.machine import machine_info

OUT = Path(__file__).resolve().parent / "results" / "etl"


def installed_peers() -> list[str]:
    """The ETL peers whose library imports here (pandas always does: homerank needs it)."""
    return [peer for peer in PEERS if importlib.util.find_spec(peer) is not None]


def strong_scaling(events: int, workers: list[int], *, processes: bool = True, threads_per_worker: int = 1,
                   data_root: Path = DEFAULT_DATA) -> dict[str, Any]:
    """One log, homerank with each worker count in ``workers`` (ascending; the first is the baseline), then each
    installed peer once. Returns the JSON written by ``python -m bench etl-strong``."""
    log = ensure_log(data_root, events)
    workers = sorted(set(workers))
    points, peers = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-etl-strong-") as scratch:
        for count in workers:
            result = run_engine("homerank", log["events_dir"], count, processes, threads_per_worker, 1, Path(scratch))
            points.append({"workers": count, "seconds": result["seconds"], "edges": result["edges"],
                           "stage_seconds": result.get("stage_seconds"),
                           "client_peak_rss_bytes": result["own_peak_rss_bytes"],
                           "tree_peak_rss_bytes": result["tree_peak_rss_bytes"]})
        for peer in installed_peers():
            result = run_engine(peer, log["events_dir"], 1, False, 1, 1, Path(scratch))
            peers[peer] = {"seconds": result["seconds"], "edges": result["edges"],
                           "peak_rss_bytes": result["tree_peak_rss_bytes"], "threads": result.get("threads")}
    base = points[0]
    for point in points:
        point["speedup"] = base["seconds"] / point["seconds"]
        point["efficiency"] = point["speedup"] * base["workers"] / point["workers"]
        point["vs_peers"] = {peer: peers[peer]["seconds"] / point["seconds"] for peer in peers}
    edges = {p["edges"] for p in points} | {p["edges"] for p in peers.values()}
    return {"events": events, "input_rows": log["rows"], "processes": processes,
            "threads_per_worker": threads_per_worker, "baseline_workers": base["workers"], "points": points,
            "peers": peers, "peers_skipped": [p for p in PEERS if p not in peers], "edges_agree": len(edges) == 1,
            "machine": machine_info(("pandas", "pyarrow", "dask", "distributed", *peers))}


def strong_markdown(result: dict[str, Any]) -> str:
    peers = list(result["peers"])
    lines = [f"# ETL strong scaling: {result['events']} events ({result['input_rows']} rows), "
             f"{'worker processes' if result['processes'] else 'threads'}", "",
             "| workers | seconds | speedup | efficiency | client peak MiB | all processes peak MiB | "
             + " | ".join(f"vs {p}" for p in peers) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(peers)]
    for p in result["points"]:
        lines.append(f"| {p['workers']} | {p['seconds']:.2f} | {p['speedup']:.2f} | {p['efficiency']:.2f} | "
                     f"{p['client_peak_rss_bytes'] / MIB:.0f} | {p['tree_peak_rss_bytes'] / MIB:.0f} | "
                     + " | ".join(f"{p['vs_peers'][q]:.2f}" for q in peers) + " |")
    lines += ["", "Peers (one process each): " + (", ".join(
        f"{name} {peer['seconds']:.2f} s" for name, peer in result["peers"].items()) or "none"),
        f"Skipped (not installed): {', '.join(result['peers_skipped']) or 'none'}; "
        f"k-core edges agree: {result['edges_agree']}",
        f"Machine: {result['machine'].get('cpu_count')} CPUs, {result['machine'].get('memory_gib')} GiB, "
        f"{result['machine'].get('platform')}", ""]
    return "\n".join(lines)


def write_strong(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    write_atomic(path.with_suffix(".md"), strong_markdown(result))
    say(f"etl-strong: wrote {path} and {path.with_suffix('.md')}")
