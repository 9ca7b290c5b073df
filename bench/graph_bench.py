"""The graph benchmark (issue 17, item 8): homerank's ``graph`` stage vs scipy.sparse and networkx doing the same
core work on the same training edges.

``python -m bench graph --events N`` takes the ETL suite's generated log (`bench.etl_suite.ensure_log`, cached in
``runs/bench-data/``), runs homerank's ``etl`` once through the CLI into a run directory cached beside it
(``DIR/graph/events-N/run``, keyed by the log's spec; not timed), then times each engine in its own subprocess
(`bench.graph_runner`) on that run: homerank's ``graph`` stage as ``homerank graph`` runs it, scipy.sparse
(normalised adjacency + csgraph components) and networkx (bipartite graph + components; skipped with a recorded
reason where it would take too long or too much memory). All engines must agree on the edges and the components.
See bench/README.md ("Graph") for the JSON keys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.etl_suite import (
    DEFAULT_DATA,
    MIB,
    ROOT,
    default_repeat,
    ensure_log,
    run_runner,
    runner_env,
    say,
    write_atomic,
    write_result,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "graph"
ENGINES = ("homerank", "scipy", "networkx")
PEERS = ("scipy", "networkx")
# networkx's cost per undirected training edge, measured here at 1e6 events (355,509 edges; 2-core VM under load
# 3-5): 9-18 us and about 1,000 B per edge (the graph, its attribute dicts and the edge arrays), and 20 us and 560 B
# at 1e7 events (4.1M edges); rounded up, so that the estimate errs on the side of skipping
NX_SECONDS_PER_EDGE = 2e-5
NX_BYTES_PER_EDGE = 1_500
NX_BUDGET_SECONDS = 300.0
NX_MEMORY_SHARE = 0.5  # of the memory available when the point starts
ETL_OVERRIDES = {"profiles.enabled": "false"}  # the graph needs the edges and the indexes only


def result_name(events: int, workers: int) -> str:
    return f"events-{events}-workers-{workers}"


def ensure_etl_run(data_root: Path, events: int, workers: int) -> dict[str, Any]:
    """``data_root/graph/events-N/run``: homerank's ``etl`` on the cached log, run once through the CLI and reused
    while ``etl.json`` (written last) names the same log spec and overrides."""
    log_info = ensure_log(data_root, events)
    folder = data_root / "graph" / f"events-{events}"
    run, marker = folder / "run", folder / "etl.json"
    if marker.exists():
        cached = json.loads(marker.read_text())
        if (cached.get("log_spec") == log_info["spec"] and cached.get("overrides") == ETL_OVERRIDES
                and (run / "etl" / "edges").is_dir() and (run / "user_index.parquet").exists()):
            say(f"etl: reusing {run} (made with {cached['workers']} worker(s) in {cached['etl_seconds']:.1f}s)")
            return {**cached, "reused": True, "log": log_info}
        say(f"etl: {marker} was made from another log or config; running the ETL again")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "homerank", "etl", "--out", str(run), "--quiet", "--input",
               log_info["events_dir"], "--device", "cpu", "--set", f"cluster.n_workers={workers}"]
    for key, value in ETL_OVERRIDES.items():
        command += ["--set", f"{key}={value}"]
    say(f"etl (not timed): {' '.join(command)}")
    started = time.perf_counter()
    with open(folder / "etl.log", "w") as log_file:
        completed = subprocess.run(command, cwd=ROOT, env=runner_env(), stdout=log_file, stderr=subprocess.STDOUT,
                                   check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = (folder / "etl.log").read_text()[-3000:]
        raise SystemExit(f"bench graph: homerank etl failed (exit {completed.returncode}): {' '.join(command)}\n"
                         f"{tail}")
    info = {"log_spec": log_info["spec"], "overrides": ETL_OVERRIDES, "workers": workers, "etl_seconds": seconds,
            "command": command, "run": str(run)}
    write_atomic(marker, json.dumps(info, indent=2) + "\n")
    say(f"etl: done in {seconds:.1f}s -> {run}")
    return {**info, "reused": False, "log": log_info}


def graph_inputs(run: Path) -> dict[str, Any]:
    """Train edges (rows of the split), nodes and the run's ``graph.edge_weight``, read cheaply (no graph built)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import yaml

    split = pq.read_table(run / "etl" / "edges", columns=["split"]).column("split")
    train = int(pc.sum(pc.equal(split.cast("string"), "train")).as_py() or 0)
    users = pq.read_metadata(run / "user_index.parquet").num_rows
    items = pq.read_metadata(run / "item_index.parquet").num_rows
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    edge_weight = ((config or {}).get("graph") or {}).get("edge_weight", "binary")
    return {"train_rows": train, "users": users, "items": items, "edge_weight": edge_weight}


def networkx_plan(train_rows: int, budget_seconds: float = NX_BUDGET_SECONDS,
                  available_bytes: int | None = None) -> dict[str, Any]:
    """Whether networkx runs: its estimated seconds and bytes for ``train_rows`` edges against the budget and a
    share of the available memory; ``skip_reason`` is None when it runs."""
    import psutil

    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    seconds, memory = train_rows * NX_SECONDS_PER_EDGE, train_rows * NX_BYTES_PER_EDGE
    reasons = []
    if seconds > budget_seconds:
        reasons.append(f"estimated {seconds:.0f}s per run for {train_rows} edges (at {NX_SECONDS_PER_EDGE * 1e6:.0f} "
                       f"us/edge) exceeds the {budget_seconds:.0f}s budget")
    if memory > NX_MEMORY_SHARE * available:
        reasons.append(f"estimated {memory / MIB:.0f} MiB (at {NX_BYTES_PER_EDGE} B/edge) exceeds "
                       f"{NX_MEMORY_SHARE:.0%} of the {available / MIB:.0f} MiB available")
    return {"estimated_seconds": seconds, "estimated_bytes": memory, "available_bytes": available,
            "skip_reason": "; ".join(reasons) or None}


def run_engine(engine: str, run: Path, edge_weight: str, repeat: int) -> dict[str, Any]:
    """`bench.graph_runner` in a subprocess of its own; its JSON result."""
    result = run_runner("bench.graph_runner", engine, ["--engine", engine, "--run", str(run),
                                                       "--edge-weight", edge_weight, "--repeat", str(repeat)])
    say(f"{engine}: {result['seconds']:.2f}s (median of {repeat}), edges {result['edges']}, components "
        f"{result['components']}, peak RSS {result['tree_peak_rss_bytes'] / MIB:.0f} MiB")
    return result


def graph_point(events: int, workers: int, *, repeat: int | None = None, data_root: Path = DEFAULT_DATA,
                networkx_budget: float = NX_BUDGET_SECONDS) -> dict[str, Any]:
    """One point: the cached ETL run, then homerank, scipy and (where it fits) networkx on its training edges."""
    from bench.machine import machine_info

    repeat = repeat or default_repeat(events)
    etl = ensure_etl_run(Path(data_root), events, workers)
    run = Path(etl["run"])
    inputs = graph_inputs(run)
    plan = networkx_plan(inputs["train_rows"], networkx_budget)
    engines: dict[str, dict[str, Any] | None] = {}
    for engine in ENGINES:
        if engine == "networkx" and plan["skip_reason"]:
            say(f"networkx: skipped: {plan['skip_reason']}")
            engines[engine] = None
            continue
        engines[engine] = run_engine(engine, run, inputs["edge_weight"], repeat)
    ran = {engine: r for engine, r in engines.items() if r is not None}
    seconds = {engine: (r["seconds"] if r else None) for engine, r in engines.items()}
    ours = seconds["homerank"]
    edges = {engine: r["edges"] for engine, r in ran.items()}
    components = {engine: r["components"] for engine, r in ran.items()}
    stage_seconds = ran["homerank"]["stage_seconds"]
    return {
        "events": events,
        "workers": workers,
        "edges": edges["homerank"],
        "seconds": seconds,
        "speedup_vs_scipy": seconds["scipy"] / ours,
        "speedup_vs_networkx": seconds["networkx"] / ours if seconds["networkx"] is not None else None,
        "components": components["homerank"],
        "peak_rss_bytes": {engine: (r["tree_peak_rss_bytes"] if r else None) for engine, r in engines.items()},
        "machine": machine_info(("networkx", "pyarrow", "psutil")),
        "agree": len(set(edges.values())) == 1 and len(set(components.values())) == 1,
        "edges_by_engine": edges,
        "components_by_engine": components,
        "nodes": inputs["users"] + inputs["items"],
        "users": inputs["users"],
        "items": inputs["items"],
        "edge_weight": inputs["edge_weight"],
        "networkx": {**plan, "ran": engines["networkx"] is not None, "budget_seconds": networkx_budget},
        "homerank_stage_seconds": stage_seconds,
        "own_clock": {"homerank": stage_seconds, "speedup_vs_scipy": seconds["scipy"] / stage_seconds if stage_seconds
                      else None, "speedup_vs_networkx": seconds["networkx"] / stage_seconds
                      if stage_seconds and seconds["networkx"] is not None else None},
        "baseline_rss_bytes": {engine: r["baseline_rss_bytes"] for engine, r in ran.items()},
        "repeat": repeat,
        "seconds_all": {engine: r["seconds_all"] for engine, r in ran.items()},
        "etl": {key: etl[key] for key in ("run", "workers", "etl_seconds", "reused", "command")},
        "input_rows": etl["log"]["rows"],
        "input": etl["log"]["events_dir"],
        "synthetic_spec": etl["log"]["spec"],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "runners": ran,
    }


def check_agreement(result: dict[str, Any], json_path: Path) -> None:
    """Fail loudly when the engines disagree: the numbers go to ``*.mismatch.json``, never to the result file."""
    if not result["agree"]:
        evidence = json_path.with_name(json_path.stem + ".mismatch.json")
        write_atomic(evidence, json.dumps(result, indent=2) + "\n")
        raise SystemExit(f"bench graph: the engines disagree: edges {result['edges_by_engine']}, components "
                         f"{result['components_by_engine']} ({result['events']} events, run "
                         f"{result['etl']['run']}); details in {evidence}")


def _number(value: float | None, digits: int = 2) -> str:
    return "skipped" if value is None else f"{value:.{digits}f}"


def point_markdown(result: dict[str, Any]) -> str:
    ours = result["seconds"]["homerank"]
    lines = [f"# Graph benchmark: {result['events']} events", "",
             f"Training edges: {result['edges']} over {result['nodes']} nodes ({result['users']} users, "
             f"{result['items']} items), graph.edge_weight {result['edge_weight']}; {result['components']} "
             f"connected component(s). Seconds: median of {result['repeat']}. The ETL (not timed) ran with "
             f"{result['etl']['workers']} worker(s); the graph stage starts no dask cluster.", "",
             "| engine | seconds | edges | components | peak RSS (MiB) | homerank speedup vs engine |",
             "|---|---|---|---|---|---|"]
    for engine in ENGINES:
        seconds, peak = result["seconds"][engine], result["peak_rss_bytes"][engine]
        lines.append(f"| {engine} | {_number(seconds)} | {result['edges_by_engine'].get(engine, '-')} | "
                     f"{result['components_by_engine'].get(engine, '-')} | "
                     f"{'-' if peak is None else f'{peak / MIB:.0f}'} | "
                     f"{'-' if seconds is None else f'{seconds / ours:.2f}'} |")
    own = result["own_clock"]
    lines += ["", f"homerank's stage clock without the report refresh that `run_stage` does after it "
                  f"(`logs/timings.json`): {_number(own['homerank'])}s; on that clock homerank's speedup vs scipy is "
                  f"{_number(own['speedup_vs_scipy'])}, vs networkx {_number(own['speedup_vs_networkx'])}."]
    if not result["networkx"]["ran"]:
        lines += ["", f"networkx skipped: {result['networkx']['skip_reason']}."]
    lines += ["",
              "Speedup > 1 means homerank is faster. homerank's stage does more than the peers: it also sorts the "
              "edge list into PyG's CSR order, checks the weights, saves `graph/graph.pt`, degree statistics and "
              "histograms, `graph/stats.json` and refreshes the run's report; scipy builds D^-1/2 A D^-1/2 and the "
              "components only; networkx builds the bipartite graph, weighted degrees, the normalised weight per "
              "edge and the components.",
              "", f"Load average at the end: {result['load_average']}.",
              "", f"Machine: `{json.dumps(result['machine'])}`"]
    return "\n".join(lines) + "\n"


def write_point(result: dict[str, Any], json_path: Path) -> None:
    write_result(result, json_path, point_markdown)
