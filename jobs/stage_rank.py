"""Stage 5 — rank: top-K items per user in the original ids -> ``rankings/`` (Parquet dataset with
columns user_id, rank, item_id, score; rank 1..K).

* Users in the model get the GNN's scores <E_u, E_i>.
* Users with history that the k-core filter dropped (no training history) get the popularity ranking
  (score = number of training users of the item).
* For every user, items on which they had any of ``rank.exclude_event_types`` (default: purchase), at any
  time in the log, are never ranked.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.encode import decode
from homerank.gnn.metrics import CSRIndex, top_k
from homerank.gnn.scorer import popularity_scorer
from homerank.jobs.artifacts import item_popularity, load_embeddings, load_scorer, require
from homerank.jobs.config import JobConfig
from homerank.jobs.rundir import RunDir, write_json, write_parquet_dataset

log = logging.getLogger(__name__)

RANKING_COLUMNS = ["user_id", "rank", "item_id", "score"]


def _excluded_pairs(interactions: pd.DataFrame, exclude_types: list[str]) -> pd.DataFrame:
    """(user_id, item_id) pairs never to rank. Logs without event types (the lightgcn format) carry only
    ``n_interaction``: then every known pair is excluded."""
    if not exclude_types:
        return interactions.iloc[:0][[schema.USER, schema.ITEM]]
    columns = [schema.count_column(t) for t in exclude_types if schema.count_column(t) in interactions.columns]
    if not columns and schema.count_column("interaction") in interactions.columns:
        columns = [schema.count_column("interaction")]
    mask = np.zeros(len(interactions), dtype=bool)
    for column in columns:
        mask |= interactions[column].to_numpy() > 0
    return interactions.loc[mask, [schema.USER, schema.ITEM]]


def _ranking_frame(user_ids: np.ndarray, items: torch.Tensor, scores: torch.Tensor,
                   item_index: pd.DataFrame) -> pd.DataFrame:
    k = items.shape[1]
    valid = torch.isfinite(scores).numpy()
    frame = pd.DataFrame({
        "user_id": np.repeat(user_ids, k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_ids)),
        "item_id": decode(items.numpy().ravel(), item_index, schema.ITEM, schema.ITEM_INDEX),
        "score": scores.numpy().ravel().astype(np.float32),
    })
    return frame[valid.ravel()]


def run_rank(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    user_emb, item_emb = load_embeddings(run)
    edges = pd.read_parquet(require(run.edges, "etl"))
    interactions = pd.read_parquet(require(run.interactions, "etl"))
    user_index = pd.read_parquet(require(run.user_index, "etl"))
    item_index = pd.read_parquet(require(run.item_index, "etl"))
    num_users, num_items = user_emb.shape[0], item_emb.shape[0]
    device = backend.torch_device
    k = min(config.rank.k, num_items)

    # all users with history: model users first (0..U-1), then the ones without training history
    known = interactions[[schema.USER]].drop_duplicates().merge(user_index, on=schema.USER, how="left")
    cold = known[known[schema.USER_INDEX].isna()][schema.USER].sort_values(kind="stable").to_numpy()
    cold_rows = pd.DataFrame({schema.USER: cold, schema.USER_INDEX: np.arange(num_users, num_users + len(cold))})
    everyone = pd.concat([user_index.sort_values(schema.USER_INDEX), cold_rows], ignore_index=True)
    excluded = _excluded_pairs(interactions, config.rank.exclude_event_types)
    excluded = excluded.merge(everyone, on=schema.USER).merge(item_index, on=schema.ITEM)
    exclude = CSRIndex.from_pairs(excluded[schema.USER_INDEX].to_numpy(), excluded[schema.ITEM_INDEX].to_numpy(),
                                  len(everyone), num_items)

    model_users = torch.arange(num_users)
    items, scores = top_k(load_scorer(run, device), model_users, k, exclude,
                          config.rank.batch_size, device)
    frames = [_ranking_frame(everyone[schema.USER].to_numpy()[:num_users], items, scores, item_index)]
    if len(cold):
        popularity = popularity_scorer(item_popularity(edges, num_items).to(device))
        cold_users = torch.arange(num_users, len(everyone))
        items, scores = top_k(popularity, cold_users, k, exclude, config.rank.batch_size, device)
        frames.append(_ranking_frame(cold, items, scores, item_index))
    rankings = pd.concat(frames, ignore_index=True)[RANKING_COLUMNS]
    write_parquet_dataset(run.rankings, rankings)
    per_user = rankings.groupby("user_id").size()
    stats = {
        "users": int(per_user.size),
        "model_users": int(num_users),
        "popularity_users": len(cold),
        "k": k,
        "rows": len(rankings),
        "users_with_fewer_than_k": int((per_user < k).sum()),
        "excluded_pairs": len(excluded),
    }
    write_json(run.rank_stats, stats)
    log.info("rank: %s", stats)
    return stats
