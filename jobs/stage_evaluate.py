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
from homerank.gnn.metrics import evaluate_popularity, metrics_from_hits, ranking_hits, sample_standard_errors
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
    with_test_items = int((test.counts() > 0).sum())
    scored = test.sample_users(config.evaluate.test_users, config.seed)  # `test` itself when all are scored
    sampled = scored is not test
    if sampled:
        log.info("evaluate: test metrics of a seeded sample of %d of the %d test users (evaluate.test_users; null "
                 "scores every one)", config.evaluate.test_users, with_test_items)
    # a dot-product model on the CPU: faiss's exact search, no (B, I) blocks (homerank.gnn.dot_top_k)
    hits, n_truth = ranking_hits(model_scores, scored, known, ks, batch, device, dot_ranker(scorer, device))
    test_metrics = metrics_from_hits(hits, n_truth, ks)
    baseline = evaluate_popularity(popularity, scored, known, ks, batch)
    result: dict[str, Any] = {"test": test_metrics, "baselines": {"popularity": baseline},
                              "test_users": {"scored": int(n_truth.numel()), "with_test_items": with_test_items,
                                             "sampled": sampled}}
    if sampled:
        result["test_standard_errors"] = sample_standard_errors(hits, n_truth, ks, with_test_items)
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
    errors = result.get("test_standard_errors", {})
    log.info("evaluate: GNN recall@20 %.4f%s ndcg@20 %.4f%s | popularity recall@20 %.4f ndcg@20 %.4f",
             test_metrics.get("recall@20", float("nan")),
             f" (+-{errors['recall@20']:.4f})" if "recall@20" in errors else "",
             test_metrics.get("ndcg@20", float("nan")), f" (+-{errors['ndcg@20']:.4f})" if "ndcg@20" in errors else "",
             baseline.get("recall@20", float("nan")), baseline.get("ndcg@20", float("nan")))
    return metrics
