"""Stage 5 — rank: top-K items per user in the original ids -> ``rankings/`` (Parquet dataset with
columns user_id, rank, item_id, score; rank 1..K), for every user with history. The ranking itself is
`homerank.jobs.recommend.Recommender` (the same code answers `homerank.Run.recommend`): model users get the
saved scorer's scores, users without training history the popularity ranking, and items with any of
``rank.exclude_event_types`` (default: purchase) are never ranked for that user.

Before anything is written, every user must have min(K, items allowed for that user) rows, all with finite
scores; otherwise the stage stops (`GateError`, exit 3) and ``rankings/`` keeps its earlier content, if any.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.errors import GateError
from homerank.jobs.config import JobConfig
from homerank.jobs.recommend import RANKING_COLUMNS, Recommender
from homerank.jobs.rundir import RunDir, write_json, write_parquet_dataset

log = logging.getLogger(__name__)


def run_rank(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    recommender = Recommender.from_run(run, config.rank.exclude_event_types, backend.torch_device,
                                       config.rank.batch_size)
    everyone = recommender.all_users()
    k = min(config.rank.k, recommender.scorer.num_items)
    ranked = recommender.recommend(everyone, k)
    rankings = ranked[RANKING_COLUMNS]
    per_user = rankings.groupby("user_id").size().reindex(everyone, fill_value=0)
    check_complete(rankings, everyone, per_user, np.minimum(k, recommender.allowed_items(everyone)), run)
    write_parquet_dataset(run.rankings, rankings)
    stats = {
        "users": int((per_user > 0).sum()),
        "model_users": int(recommender.scorer.num_users),
        "popularity_users": int(len(everyone) - recommender.scorer.num_users),
        "k": k,
        "rows": len(rankings),
        "users_with_fewer_than_k": int((per_user < k).sum()),
        "excluded_pairs": int(recommender.excluded.merge(recommender.item_index, on=schema.ITEM).shape[0]),
    }
    write_json(run.rank_stats, stats)
    log.info("rank: %s", stats)
    return stats


def check_complete(rankings: pd.DataFrame, users: np.ndarray, per_user: pd.Series, expected: np.ndarray,
                   run: RunDir) -> None:
    """Stop (`GateError`) unless every user of ``users`` has ``expected`` rows (min(K, allowed items)) in
    ``rankings`` and every score is finite: a partial ranking is never published."""
    scores = rankings["score"].to_numpy(dtype=np.float64)
    bad_scores = int((~np.isfinite(scores)).sum())
    if bad_scores:
        raise GateError(f"rank: {bad_scores} of {len(rankings)} ranking scores are not finite (scorer "
                        f"{run.scorer}); nothing written to {run.rankings}: train again")
    short = per_user.to_numpy() < expected
    if short.any():
        first = int(np.flatnonzero(short)[0])
        raise GateError(f"rank: {int(short.sum())} of {len(users)} users got fewer rows than min(rank.k, items "
                        f"allowed for them), e.g. user {users[first]}: {int(per_user.iloc[first])} of "
                        f"{int(expected[first])} (non-finite scores from {run.scorer}?); nothing written to "
                        f"{run.rankings}: train again")
