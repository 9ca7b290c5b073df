"""Stage 5 — rank: top-K items per user in the original ids -> ``rankings/`` (Parquet dataset with
columns user_id, rank, item_id, score; rank 1..K), for every user with history, and the scorer's vectors for
serving -> ``embeddings/``. The ranking itself is `homerank.jobs.recommend.Recommender` (the same code answers
`homerank.Run.recommend`): model users get the saved scorer's scores, users without training history the
popularity ranking, and items with any of ``rank.exclude_event_types`` (default: purchase) are never ranked for
that user.

Users go in blocks of ``rank.block_users`` (model users in index order, then the rest by id): each block is
ranked in one vectorised pass and written at once as its own ``part-NNNNN.parquet`` (part number = block number)
into a staging folder, so no frame ever holds every user's rows. Before a block is written, each of its users
must have min(K, items allowed for that user) rows, all with finite scores; otherwise the stage stops
(`GateError`, exit 3). Only when every block is done are the manifest and ``_SUCCESS`` added and ``rankings/``,
``embeddings/`` and ``rank/stats.json`` swapped into place; a failed block leaves the earlier outputs as they were
and removes the staging folder.

``embeddings/`` (for serving; `write_embeddings`): ``users.parquet`` (user_id, embedding) in model index order,
``items.parquet`` (item_id, embedding) in item index order, ``embedding`` a fixed_size_list<float32>[d] column,
and ``items.faiss``, a faiss index whose row j is row j of ``items.parquet`` (`homerank.jobs.recommend.ItemSearch`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.errors import GateError
from homerank.jobs.artifacts import EMBEDDING_COLUMN, EMBEDDING_METADATA
from homerank.jobs.config import JobConfig
from homerank.jobs.recommend import RANKING_COLUMNS, ItemSearch, Recommender
from homerank.jobs.rundir import RunDir, atomic_path, publish_outputs, publish_parquet_parts, write_json, write_parquet

log = logging.getLogger(__name__)

RANK_OUTPUTS = ("embeddings", "rankings", "rank_stats")  # RunDir attributes, published together at the end


def run_rank(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    started = time.perf_counter()
    settings = config.rank
    recommender = Recommender.for_run(run, settings, backend.torch_device)
    staging = RunDir(run.rank_staging)
    shutil.rmtree(staging.root, ignore_errors=True)  # what a killed rank stage left
    try:
        staging.ensure()
        search = recommender.item_search or ItemSearch.build(recommender.scorer.item_embeddings.numpy(),
                                                             settings.index_exact_items)
        write_embeddings(staging, recommender, search)
        stats = rank_blocks(recommender, staging, settings.k, settings.block_users, run)
        stats["retrieval"] = ("exact scoring" if recommender.item_search is None else
                              f"faiss {'exact' if search.exact else 'HNSW'} index, {settings.index_overfetch}x "
                              "overfetch, exact re-scoring")
        stats["seconds"] = round(time.perf_counter() - started, 3)
        stats["users_per_second"] = round(stats["users"] / max(stats["seconds"], 1e-9), 1)
        write_json(staging.rank_stats, stats)
        publish_outputs(staging, run, RANK_OUTPUTS)
    finally:
        shutil.rmtree(staging.root, ignore_errors=True)
    log.info("rank: %s", stats)
    return stats


def rank_blocks(recommender: Recommender, staging: RunDir, k: int, block_users: int, run: RunDir) -> dict[str, Any]:
    """Rank every user with history, ``block_users`` at a time, each block written to its own part in
    ``staging.rankings_staging``, then published as the dataset ``staging.rankings`` (manifest last). Returns the
    stage's statistics."""
    everyone = recommender.all_users()
    allowed = recommender.allowed_items(everyone)
    k = min(k, recommender.scorer.num_items)
    parts = staging.rankings_staging
    parts.mkdir(parents=True, exist_ok=True)
    blocks = max(1, -(-len(everyone) // block_users))
    ranked_users = rows = fewer_than_k = 0
    for number in range(blocks):
        start = number * block_users
        block = everyone[start : start + block_users]
        if not len(block):  # nobody has history: one empty part is published below
            continue
        rankings = recommender.recommend(block, k)[RANKING_COLUMNS]
        # rows come per user in block order (rank 1..k), so a run-length count gives each user's rows
        per_user = pd.Series(np.bincount(_block_positions(rankings, block), minlength=len(block)))
        check_complete(rankings, block, per_user, np.minimum(k, allowed[start : start + len(block)]), run, number,
                       blocks)
        if len(rankings):
            write_parquet(parts / f"part-{number:05d}.parquet", rankings)  # temp file, then rename
        ranked_users += int((per_user > 0).sum())
        rows += len(rankings)
        fewer_than_k += int((per_user < k).sum())
        log.info("rank: block %d/%d, %d users, %d rows", number + 1, blocks, len(block), len(rankings))
    publish_parquet_parts(parts, staging.rankings, _empty_rankings(recommender))  # manifest and _SUCCESS last
    return {
        "users": ranked_users,
        "model_users": int(recommender.scorer.num_users),
        "popularity_users": int(len(everyone) - recommender.scorer.num_users),
        "k": k,
        "rows": rows,
        "users_with_fewer_than_k": fewer_than_k,
        "excluded_pairs": int(recommender.excluded.merge(recommender.item_index, on=schema.ITEM).shape[0]),
        "block_users": block_users,
        "blocks": blocks,
    }


def _block_positions(rankings: pd.DataFrame, block: np.ndarray) -> np.ndarray:
    """For each row of ``rankings``, the position of its user in ``block`` (users are unique in a block)."""
    codes = pd.Index(block).get_indexer(rankings["user_id"])
    if (codes < 0).any():  # cannot happen: recommend answers exactly the users asked
        raise AssertionError("rank: a ranking row for a user outside its block")
    return codes


def _empty_rankings(recommender: Recommender) -> pd.DataFrame:
    """No rows, the columns and dtypes of ``rankings/`` (the one part written when nobody has history)."""
    return pd.DataFrame({
        "user_id": pd.Series(dtype=recommender.user_index[schema.USER].dtype),
        "rank": pd.Series(dtype=np.int32),
        "item_id": pd.Series(dtype=recommender.item_index[schema.ITEM].dtype),
        "score": pd.Series(dtype=np.float32),
    })


def check_complete(rankings: pd.DataFrame, users: np.ndarray, per_user: pd.Series, expected: np.ndarray,
                   run: RunDir, block: int = 0, blocks: int = 1) -> None:
    """Stop (`GateError`) unless every user of ``users`` (block ``block`` of ``blocks``) has ``expected`` rows
    (min(K, allowed items)) in ``rankings`` and every score is finite: a partial ranking is never published."""
    where = f" in block {block + 1} of {blocks}" if blocks > 1 else ""
    scores = rankings["score"].to_numpy(dtype=np.float64)
    bad_scores = int((~np.isfinite(scores)).sum())
    if bad_scores:
        raise GateError(f"rank: {bad_scores} of {len(rankings)} ranking scores{where} are not finite (scorer "
                        f"{run.scorer}); nothing written to {run.rankings}: train again")
    short = per_user.to_numpy() < expected
    if short.any():
        first = int(np.flatnonzero(short)[0])
        raise GateError(f"rank: {int(short.sum())} of {len(users)} users{where} got fewer rows than min(rank.k, "
                        f"items allowed for them), e.g. user {users[first]}: {int(per_user.iloc[first])} of "
                        f"{int(expected[first])} (non-finite scores from {run.scorer}?); nothing written to "
                        f"{run.rankings}: train again")


def write_embeddings(target: RunDir, recommender: Recommender, search: ItemSearch) -> None:
    """``target.embeddings``: users.parquet and items.parquet (the id column in its original dtype, then
    ``embedding``, fixed_size_list<float32>[d]; users in model index order, items in item index order, so item
    row j is row j of ``items.faiss``) and the item index, swapped into place as one folder.

    The vectors are the scorer's final LightGCN embeddings. For a LightGCN scorer the score of (u, j) is their dot
    product; for the LightGCN + GF-CF blend (or the filter alone) exact scores need the scorer
    (``train/scorer.pt``, `homerank.gnn.scorer.Scorer`): the dot product is then only its LightGCN part. The Parquet
    schema metadata ``homerank.embeddings`` (JSON) says which."""
    scorer = recommender.scorer
    note = {"format": "homerank.embeddings/1", "dim": int(scorer.user_embeddings.shape[1]), "scorer": scorer.kind,
            "score": ("dot product of the user and item vectors" if scorer.kind == "lightgcn" else
                      "the LightGCN part only: exact scores need train/scorer.pt (homerank.gnn.scorer.Scorer)"),
            "index": "items.faiss: cosine index over rows [x_j, sqrt(M^2 - |x_j|^2)]; query with [u, 0]"}
    with atomic_path(target.embeddings) as tmp:
        tmp.mkdir(parents=True)
        for path, vectors, table, id_column, index_column in (
                (target.user_embeddings, scorer.user_embeddings, recommender.user_index, schema.USER,
                 schema.USER_INDEX),
                (target.item_embeddings, scorer.item_embeddings, recommender.item_index, schema.ITEM,
                 schema.ITEM_INDEX)):
            _write_embedding_table(tmp / path.name, table.sort_values(index_column)[id_column], vectors.numpy(), note)
        search.index.save(tmp / target.item_faiss.name)


def _write_embedding_table(path: Any, ids: pd.Series, vectors: np.ndarray, note: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    table = pa.Table.from_pandas(ids.reset_index(drop=True).to_frame(), preserve_index=False)
    table = table.append_column(EMBEDDING_COLUMN, pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()),
                                                                                    vectors.shape[1]))
    metadata = {**(table.schema.metadata or {}), EMBEDDING_METADATA: json.dumps(note).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)
