"""Stage 5 — rank: top-K items per user in the original ids -> ``rankings/`` (Parquet dataset with
columns user_id, rank, item_id, score; rank 1..K), for every user with history. The ranking itself is
`homerank.jobs.recommend.Recommender` (the same code answers `homerank.Run.recommend`): model users get the
saved scorer's scores, users without training history the popularity ranking, and items with any of
``rank.exclude_event_types`` (default: purchase) are never ranked for that user.
"""

from __future__ import annotations

import logging
from typing import Any

from homerank.engine import schema
from homerank.engine.backend import Backend
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
    write_parquet_dataset(run.rankings, rankings)
    per_user = rankings.groupby("user_id").size().reindex(everyone, fill_value=0)
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
