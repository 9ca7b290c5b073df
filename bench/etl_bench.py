"""ETL side by side: homerank's ETL stage vs the same core work written directly in pandas and polars.

The core work, identical for the three: read the Parquet log, drop rows with null ids / unknown event type /
null timestamp, drop exact duplicates, weight events, aggregate to one edge per (user, item) with weight sum,
first/last time and per-type counts, iterated k-core (5, 5). homerank's stage does more on top (row-level
quarantine with reasons and provenance, the temporal split with a second aggregation pass, mapping tables,
atomic writes), so its time is reported both whole and as the ratio to the peers.

    python bench/etl_bench.py [--input runs/demo/input] [--repeat 3]

Writes bench/results/etl/summary.json and summary.md (machine info included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_info  # noqa: E402
from homerank.engine.backend import resolve_backend  # noqa: E402
from homerank.jobs.config import JobConfig  # noqa: E402
from homerank.jobs.pipeline import run_stage  # noqa: E402
from homerank.jobs.rundir import RunDir  # noqa: E402

WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0}
TYPES = list(WEIGHTS)
K = 5


def pandas_etl(events_dir: Path) -> int:
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
            return len(edges)
        edges = edges[mask]


def polars_etl(events_dir: Path) -> int:
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
            return kept.height
        frame = kept


def homerank_etl(input_dir: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        config = JobConfig(device="cpu")
        stats = run_stage("etl", RunDir(Path(tmp)), config, resolve_backend("cpu"), str(input_dir / "events"),
                          show_progress=False)
        return int(stats["kcore"]["edges"])


def timed(fn, arg, repeat: int) -> tuple[float, int]:
    seconds, result = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(arg)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default="runs/demo/input", help="folder with events/ (homerank generate)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/etl")
    args = parser.parse_args()
    input_dir = Path(args.input)
    if not (input_dir / "events").exists():
        from homerank.engine.synthetic import generate

        generate(input_dir)
    events = input_dir / "events"
    rows = len(pd.read_parquet(events, columns=["user_id"]))
    results = {}
    for name, fn, arg in (("pandas", pandas_etl, events), ("polars", polars_etl, events),
                          ("homerank", homerank_etl, input_dir)):
        try:
            seconds, edges = timed(fn, arg, args.repeat)
        except ImportError as exc:
            print(f"skip {name}: {exc}")
            continue
        results[name] = {"seconds": round(seconds, 3), "kcore_edges": edges}
        print(f"{name:9s} {seconds:7.2f}s  k-core edges {edges}")
    ours = results["homerank"]["seconds"]
    summary = {
        "benchmark": "etl: log -> validated, de-duplicated, weighted, aggregated, k-core edges",
        "input_rows": rows,
        "repeat": args.repeat,
        "results": results,
        "ratios": {f"homerank_vs_{peer}": round(ours / r["seconds"], 3) for peer, r in results.items()
                   if peer != "homerank"},
        "note": "ratio = homerank seconds / peer seconds (lower is better for homerank); homerank's stage also "
                "quarantines rows with reasons, splits per user in time with a second aggregation pass and "
                "writes its artifacts atomically",
        "machine": machine_info(("polars", "pyarrow")),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# ETL benchmark ({rows} events, median of {args.repeat})", "",
             "| engine | seconds | k-core edges | homerank / engine |", "|---|---|---|---|"]
    for name, r in results.items():
        ratio = ours / r["seconds"]
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['kcore_edges']} | {ratio:.2f} |")
    lines += ["", summary["note"], "", f"Machine: {json.dumps(summary['machine'])}"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
