"""Stage 2 — graph: training edges -> normalised bipartite graph (``graph/graph.pt``) + statistics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.graph import build_graph, check_edges, degree_histogram, graph_statistics
from homerank.jobs.artifacts import read_edges, require
from homerank.jobs.config import JobConfig
from homerank.jobs.rundir import RunDir, atomic_path, write_json

log = logging.getLogger(__name__)


def run_graph(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    train = read_edges(run, [schema.USER_INDEX, schema.ITEM_INDEX, schema.WEIGHT], splits=["train"])
    num_users = len(pd.read_parquet(require(run.user_index, "etl")))
    num_items = len(pd.read_parquet(require(run.item_index, "etl")))
    graph, _ = build_graph(train[schema.USER_INDEX].to_numpy(), train[schema.ITEM_INDEX].to_numpy(),
                           train[schema.WEIGHT].to_numpy(), num_users, num_items, config.graph.edge_weight, backend)
    run.graph.unlink(missing_ok=True)  # an earlier graph must not be trained on beside these edges
    check_edges(graph, len(train), config.graph.edge_weight)  # a graph without edges is never saved
    with atomic_path(run.graph) as tmp, open(tmp, "wb") as handle:  # a handle: a full disk is an OSError
        torch.save(graph.to_dict(), handle)
    stats = graph_statistics(graph, backend)
    degree = np.bincount(graph.edge_index[0].numpy(), minlength=graph.num_nodes)
    stats["user_degree_histogram"] = degree_histogram(degree[:num_users])
    stats["item_degree_histogram"] = degree_histogram(degree[num_users:])
    write_json(run.graph_stats, stats)
    log.info("graph: %d users, %d items, %d edges, %d components", num_users, num_items, stats["edges"],
             stats["components"])
    return stats
