"""One engine's graph build in a process of its own, so that its peak memory is its own (run by
``python -m bench graph``).

The input, identical for the three engines: a run directory whose ``etl`` stage is done (``RUN/etl/edges``,
``RUN/user_index.parquet``, ``RUN/item_index.parquet``); the graph is built from the ``train`` edges over all
U + I nodes (users 0..U-1, items U..U+I-1), with A_ui = a(w_ui) by ``graph.edge_weight`` (binary, weight, log1p).

- ``homerank``: the ``graph`` stage exactly as ``homerank graph --out RUN`` runs it: RUN/config.yaml, the run's
  lock, ``run_stage("graph", ...)`` (reads the edges, builds A_hat = D^-1/2 A D^-1/2 with scipy.sparse, checks it,
  saves ``graph/graph.pt``, degree statistics and histograms, connected components through
  ``Backend.connected_components``, ``graph/stats.json``, the run's report refreshed).
- ``scipy``: the core work only: read the train edges, R as CSR, A = [[0, R], [R^T, 0]], degrees, A_hat =
  D^-1/2 A D^-1/2, ``scipy.sparse.csgraph.connected_components``.
- ``networkx``: read the train edges, ``nx.Graph`` with every user and item node (``bipartite`` 0/1) and the
  weighted edges, weighted degrees, the normalised weight a_ui / sqrt(d_u d_i) set on every edge,
  ``nx.number_connected_components``.

    python -m bench.graph_runner --engine homerank|scipy|networkx --run RUN [--edge-weight binary]
                                 [--repeat R] --result FILE

Times the work inside this process (``time.perf_counter``; imports are not timed) and samples RSS with the ETL
runner's `MemorySampler` (every ``--interval`` seconds, plus the kernel's own peak). Writes FILE (JSON).
Run it from the repository root (``bench`` is not installed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.etl_runner import MemorySampler, high_water_mark, median_stage_seconds, timing_and_memory

ENGINES = ("homerank", "scipy", "networkx")
EDGE_COLUMNS = ["user_index", "item_index", "weight", "split"]


def train_edges(run: Path) -> tuple[Any, Any, Any, int, int]:
    """(users (E,), items (E,), weights (E,), num_users, num_items) of the run's train split (numpy)."""
    import pandas as pd

    edges = pd.read_parquet(run / "etl" / "edges", columns=EDGE_COLUMNS)
    train = edges[edges["split"] == "train"]
    num_users = len(pd.read_parquet(run / "user_index.parquet", columns=["user_index"]))
    num_items = len(pd.read_parquet(run / "item_index.parquet", columns=["item_index"]))
    return (train["user_index"].to_numpy(), train["item_index"].to_numpy(), train["weight"].to_numpy(),
            num_users, num_items)


def edge_values(weights: Any, mode: str) -> Any:
    import numpy as np

    if mode == "binary":
        return np.ones(len(weights), dtype=np.float64)
    if mode == "weight":
        return weights.astype(np.float64)
    if mode == "log1p":
        return np.log1p(weights.astype(np.float64))
    raise ValueError(f"unknown graph.edge_weight {mode!r}")


def scipy_graph(run: Path, edge_weight: str) -> tuple[int, int, dict[str, Any]]:
    """(undirected edges, components, extra) with scipy.sparse: A_hat = D^-1/2 A D^-1/2 and csgraph's components."""
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    users, items, weights, num_users, num_items = train_edges(run)
    interactions = sp.csr_matrix((edge_values(weights, edge_weight), (users, items)), shape=(num_users, num_items))
    interactions.sum_duplicates()
    adjacency = sp.bmat([[None, interactions], [interactions.T, None]], format="csr")
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.power(degree, -0.5, out=inv_sqrt, where=degree > 0)  # isolated nodes keep a zero row
    scale = sp.diags(inv_sqrt)
    normalised = (scale @ adjacency @ scale).tocsr()
    components, _labels = connected_components(normalised, directed=False)
    return int(normalised.nnz // 2), int(components), {"nodes": num_users + num_items}


def networkx_graph(run: Path, edge_weight: str) -> tuple[int, int, dict[str, Any]]:
    """(undirected edges, components, extra) with networkx: the bipartite graph, weighted degrees, normalised edge
    weights, ``number_connected_components``."""
    import math

    import networkx as nx

    users, items, weights, num_users, num_items = train_edges(run)
    values = edge_values(weights, edge_weight)
    graph = nx.Graph()
    graph.add_nodes_from(range(num_users), bipartite=0)
    graph.add_nodes_from(range(num_users, num_users + num_items), bipartite=1)
    graph.add_weighted_edges_from(zip(users.tolist(), (items + num_users).tolist(), values.tolist(), strict=True))
    degree = dict(graph.degree(weight="weight"))
    for u, v, data in graph.edges(data=True):
        data["normalised"] = data["weight"] / math.sqrt(degree[u] * degree[v])
    return graph.number_of_edges(), nx.number_connected_components(graph), {"nodes": graph.number_of_nodes()}


def homerank_graph(run: Path) -> tuple[int, int, dict[str, Any]]:
    """The ``graph`` stage as ``homerank graph --out RUN`` runs it (`jobs.cli._stage_locked`): the run's
    config.yaml, its lock, ``run_stage``."""
    from homerank.engine.backend import resolve_backend
    from homerank.jobs.config import load_config
    from homerank.jobs.lock import run_lock
    from homerank.jobs.pipeline import run_stage
    from homerank.jobs.rundir import RunDir

    run_dir = RunDir(run)
    with run_lock(run_dir):
        config = load_config(run_dir.config if run_dir.config.exists() else None)
        stats = run_stage("graph", run_dir, config, resolve_backend(config.device), show_progress=False)
    # the stage's own clock (logs/timings.json): without the report refresh that run_stage does after it
    own = json.loads(run_dir.timings.read_text()).get("graph")
    nodes = stats["users"] + stats["items"]
    return int(stats["edges"]), int(stats["components"]), {"stage_seconds": own, "nodes": nodes}


def run_engine(engine: str, run: Path, edge_weight: str, repeat: int, interval: float) -> dict[str, Any]:
    work: Callable[[], tuple[int, int, dict[str, Any]]]
    if engine == "scipy":
        import pandas  # noqa: F401  (imported before the clock starts)
        import scipy.sparse.csgraph  # noqa: F401

        def work() -> tuple[int, int, dict[str, Any]]:
            return scipy_graph(run, edge_weight)
    elif engine == "networkx":
        import networkx  # noqa: F401
        import pandas  # noqa: F401

        def work() -> tuple[int, int, dict[str, Any]]:
            return networkx_graph(run, edge_weight)
    else:
        from homerank.jobs.hygiene import quiet_library_warnings
        from homerank.jobs.pipeline import run_stage  # noqa: F401

        quiet_library_warnings()

        def work() -> tuple[int, int, dict[str, Any]]:
            return homerank_graph(run)

    baseline = psutil.Process().memory_info().rss
    seconds: list[float] = []
    extras: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    with MemorySampler(interval) as memory:
        for attempt in range(1, repeat + 1):
            started = time.perf_counter()
            edges, components, extra = work()
            seconds.append(time.perf_counter() - started)
            memory.sample()
            seen.add((edges, components))
            extras.append(extra)
            print(f"[graph runner {engine}] repeat {attempt}/{repeat}: {seconds[-1]:.2f}s, edges {edges}, "
                  f"components {components}", flush=True)
    if len(seen) != 1:
        raise RuntimeError(f"{engine}: (edges, components) changed between repeats: {sorted(seen)}")
    edges, components = seen.pop()
    own_hwm = high_water_mark() or 0
    result: dict[str, Any] = {"engine": engine, "edges": edges, "components": components,
                              "nodes": extras[-1].get("nodes"),
                              **timing_and_memory(seconds, repeat, baseline, memory, own_hwm, interval)}
    if engine == "homerank":
        result["stage_seconds"] = median_stage_seconds(extras)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--run", required=True, help="run directory with the etl stage done")
    parser.add_argument("--edge-weight", choices=("binary", "weight", "log1p"), default="binary",
                        help="peers: a(w) of the adjacency (homerank reads graph.edge_weight from RUN/config.yaml)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two RSS samples")
    parser.add_argument("--result", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_engine(args.engine, Path(args.run), args.edge_weight, max(1, args.repeat), args.interval)
    out = Path(args.result)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
