"""Stage 4 — evaluate: full-ranking test (and validation) metrics of the GNN and of the popularity
baseline; assembles the run's ``metrics.json``."""

from __future__ import annotations

import logging
import time
from typing import Any

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.memory import release_free_memory
from homerank.engine.split import SPLIT
from homerank.gnn.dot_top_k import dot_ranker
from homerank.gnn.metrics import evaluate_popularity, evaluate_ranking
from homerank.gnn.scorer import Scorer
from homerank.jobs.artifacts import item_popularity, read_edges, require, split_index
from homerank.jobs.config import JobConfig
from homerank.jobs.rundir import RunDir, read_json, write_json

log = logging.getLogger(__name__)


def run_evaluate(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    started = time.perf_counter()
    scorer = Scorer.load(require(run.scorer, "train"))
    edges = read_edges(run, [schema.USER_INDEX, schema.ITEM_INDEX, SPLIT])
    num_users, num_items = scorer.num_users, scorer.num_items
    device = backend.torch_device
    model_scores = scorer.score_fn(device)
    # at test time everything before the test period is known history: train and validation pairs are masked
    known = split_index(edges, ["train", "valid"], num_users, num_items)
    test = split_index(edges, "test", num_users, num_items)
    popularity = item_popularity(edges, num_items)
    counts = edges[SPLIT].value_counts()
    del edges  # the per-user lists above are all the scoring needs (at 3 * 10^7 events the frame was 0.3 GiB)
    release_free_memory()
    ks = config.evaluate.ks
    batch = config.evaluate.batch_size
    # a dot-product model on the CPU: faiss's exact search, no (B, I) blocks (homerank.gnn.dot_top_k)
    test_metrics = evaluate_ranking(model_scores, test, known, ks, batch, device, dot_ranker(scorer, device))
    baseline = evaluate_popularity(popularity, test, known, ks, batch)
    result: dict[str, Any] = {"test": test_metrics, "baselines": {"popularity": baseline}}
    summary = read_json(require(run.train_summary, "train"))
    # validation metrics are those the model was selected with (the training graph only): the final scorer
    # may use validation edges (train.propagate_known_edges, linear_filter.refit), so it is not re-scored on them
    best = [h["valid"] for h in summary["history"] if h["epoch"] == summary["best_epoch"] and h.get("valid")]
    if best:
        result["valid"] = best[0]
    eval_seconds = time.perf_counter() - started
    etl = read_json(require(run.etl_stats, "etl"))
    metrics = {
        **result,
        "device": summary["device"],
        "train_seconds": summary["train_seconds"],
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "model": summary.get("scorer", "lightgcn"),
        "linear_filter": summary.get("linear_filter"),
        "eval_seconds": round(eval_seconds, 3),
        "dataset": {
            "users": num_users,
            "items": num_items,
            "train_edges": int(counts.get("train", 0)),
            "valid_edges": int(counts.get("valid", 0)),
            "test_edges": int(counts.get("test", 0)),
        },
        "rows": etl.get("rows"),
    }
    write_json(run.metrics, metrics)
    log.info("evaluate: GNN recall@20 %.4f ndcg@20 %.4f | popularity recall@20 %.4f ndcg@20 %.4f",
             test_metrics.get("recall@20", float("nan")), test_metrics.get("ndcg@20", float("nan")),
             baseline.get("recall@20", float("nan")), baseline.get("ndcg@20", float("nan")))
    return metrics
