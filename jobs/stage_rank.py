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
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.errors import GateError
from homerank.gnn.scorer import Scorer
from homerank.jobs.artifacts import EMBEDDING_COLUMN, EMBEDDING_METADATA, require
from homerank.jobs.config import JobConfig, RankConfig
from homerank.jobs.recommend import RANKING_COLUMNS, ItemSearch, Recommender, ranking_order
from homerank.jobs.rundir import RunDir, atomic_path, publish_outputs, publish_parquet_parts, write_json, write_parquet

log = logging.getLogger(__name__)

RANK_OUTPUTS = ("embeddings", "rankings", "rank_stats")  # RunDir attributes, published together at the end


def run_rank(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    started = time.perf_counter()
    settings = config.rank
    staging = RunDir(run.rank_staging)
    shutil.rmtree(staging.root, ignore_errors=True)  # what a killed rank stage left
    try:
        staging.ensure()
        if settings.on_cluster:
            stats = _rank_on_cluster(run, config, backend, staging)
            retrieval_index = Scorer.load(require(run.scorer, "train")).num_items >= settings.index_min_items
        else:
            recommender = Recommender.for_run(run, settings, backend.torch_device)
            search = recommender.item_search or ItemSearch.build(recommender.scorer.item_embeddings.numpy(),
                                                                 settings.index_exact_items)
            write_embeddings(staging, recommender.scorer, recommender.user_index, recommender.item_index, search)
            stats = rank_blocks(recommender, staging, settings.k, settings.block_users, run)
            retrieval_index = recommender.item_search is not None
            stats["exact_index"] = search.exact
        exact = stats.pop("exact_index")
        stats["retrieval"] = (f"faiss {'exact' if exact else 'HNSW'} index, {settings.index_overfetch}x overfetch, "
                              "exact re-scoring" if retrieval_index else "exact scoring")
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
    k = min(k, recommender.scorer.num_items)
    parts = staging.rankings_staging
    parts.mkdir(parents=True, exist_ok=True)
    blocks = max(1, -(-len(everyone) // block_users))
    totals = dict.fromkeys(BLOCK_COUNTS, 0)
    for number in range(blocks):
        block = everyone[number * block_users : (number + 1) * block_users]
        for key, value in rank_block(recommender, block, k, parts, run, number, blocks).items():
            totals[key] += value
    publish_parquet_parts(parts, staging.rankings, _empty_rankings(recommender.user_index, recommender.item_index))
    return _rank_stats(totals, recommender.scorer.num_users, len(everyone), k, block_users, blocks)


def rank_block(recommender: Recommender, block: np.ndarray, k: int, parts: Path, run: RunDir, number: int,
               blocks: int) -> dict[str, int]:
    """Rank the users ``block`` (block ``number`` of ``blocks``; ``k`` at most the items), check every user got
    min(k, allowed items) finite rows (`check_complete`) and write ``parts/part-NNNNN.parquet`` (part number = block
    number, nothing for an empty block). Returns the block's `BLOCK_COUNTS`: users ranked, rows, users with fewer
    than k rows, and excluded (user, item) pairs (of items the model knows)."""
    if not len(block):  # nobody has history: one empty part is published by the caller
        return dict.fromkeys(BLOCK_COUNTS, 0)
    allowed = recommender.allowed_items(block)
    rankings = recommender.recommend(block, k)[RANKING_COLUMNS]
    # rows come per user in block order (rank 1..k), so a run-length count gives each user's rows
    per_user = pd.Series(np.bincount(_block_positions(rankings, block), minlength=len(block)))
    check_complete(rankings, block, per_user, np.minimum(k, allowed), run, number, blocks)
    if len(rankings):
        write_parquet(parts / f"part-{number:05d}.parquet", rankings)  # temp file, then rename
    log.info("rank: block %d/%d, %d users, %d rows", number + 1, blocks, len(block), len(rankings))
    return {"users": int((per_user > 0).sum()), "rows": len(rankings),
            "users_with_fewer_than_k": int((per_user < k).sum()),
            "excluded_pairs": int((recommender.scorer.num_items - allowed).sum())}


BLOCK_COUNTS = ("users", "rows", "users_with_fewer_than_k", "excluded_pairs")  # summed over the blocks


def _rank_stats(totals: dict[str, int], model_users: int, everyone: int, k: int, block_users: int,
                blocks: int) -> dict[str, Any]:
    return {"users": totals["users"], "model_users": int(model_users), "popularity_users": int(everyone - model_users),
            "k": k, "rows": totals["rows"], "users_with_fewer_than_k": totals["users_with_fewer_than_k"],
            "excluded_pairs": totals["excluded_pairs"], "block_users": block_users, "blocks": blocks}


def _rank_on_cluster(run: RunDir, config: JobConfig, backend: Backend, staging: RunDir) -> dict[str, Any]:
    """`rank_blocks` with the blocks as tasks on the dask cluster of ``config.cluster``: the client reads the id
    tables and the user column of the interactions (small tables), writes the embeddings and the item index into
    ``staging``, cuts the blocks and publishes the parts; each worker loads the run's scorer, exclusions and that
    item index once (`_worker_recommender`) and writes its blocks' parts itself."""
    from distributed import as_completed

    from homerank.jobs.cluster import dask_client

    settings = config.rank
    scorer = Scorer.load(require(run.scorer, "train"))
    user_index = pd.read_parquet(require(run.user_index, "etl"))
    item_index = pd.read_parquet(require(run.item_index, "etl"))
    history = pd.read_parquet(require(run.interactions, "etl"), columns=[schema.USER])[schema.USER]
    everyone = ranking_order(user_index, history.drop_duplicates().to_numpy())
    search = (ItemSearch.for_run(run, scorer, settings.index_exact_items)
              if scorer.num_items >= settings.index_min_items else
              ItemSearch.build(scorer.item_embeddings.numpy(), settings.index_exact_items))
    write_embeddings(staging, scorer, user_index, item_index, search)
    k = min(settings.k, scorer.num_items)
    parts = staging.rankings_staging
    parts.mkdir(parents=True, exist_ok=True)
    blocks = max(1, -(-len(everyone) // settings.block_users))
    totals = dict.fromkeys(BLOCK_COUNTS, 0)
    with dask_client(config.cluster, backend) as client:
        futures = [client.submit(_rank_block_task, str(run.root), str(staging.root), settings.model_dump(),
                                 str(backend.torch_device), everyone[n * settings.block_users:
                                                                     (n + 1) * settings.block_users],
                                 k, n, blocks, key=f"homerank-rank-block-{n}", pure=False)
                   for n in range(blocks)]
        try:
            for future in as_completed(futures):
                for key, value in future.result().items():
                    totals[key] += value
        finally:
            client.cancel(futures)  # a failed block stops the others; nothing is published
    log.info("rank: %d blocks ranked on the cluster", blocks)
    publish_parquet_parts(parts, staging.rankings, _empty_rankings(user_index, item_index))
    stats = _rank_stats(totals, scorer.num_users, len(everyone), k, settings.block_users, blocks)
    stats["exact_index"] = search.exact
    stats["on_cluster"] = True
    return stats


_WORKER_CACHE: dict[tuple[Any, ...], Recommender] = {}
_WORKER_LOCK = threading.Lock()


def _worker_recommender(run_root: str, staging_root: str, settings: dict[str, Any], device: str) -> Recommender:
    """The run's `Recommender` on this worker, loaded once per run, scorer file and settings (threads of one
    worker share it). Items are retrieved through the index the client wrote into the staging folder."""
    run = RunDir(Path(run_root))
    scorer_file = run.scorer.stat()
    key = (run_root, staging_root, scorer_file.st_mtime_ns, scorer_file.st_size, json.dumps(settings, sort_keys=True),
           device)
    with _WORKER_LOCK:
        if key not in _WORKER_CACHE:
            rank = RankConfig(**settings)
            recommender = Recommender.from_run(run, rank.exclude_event_types, device, rank.batch_size)
            recommender.overfetch = rank.index_overfetch
            if recommender.scorer.num_items >= rank.index_min_items:
                recommender.item_search = ItemSearch.for_run(RunDir(Path(staging_root)), recommender.scorer,
                                                             rank.index_exact_items)
            _WORKER_CACHE.clear()  # one run at a time per worker: memory follows the run being ranked
            _WORKER_CACHE[key] = recommender
        return _WORKER_CACHE[key]


def _rank_block_task(run_root: str, staging_root: str, settings: dict[str, Any], device: str, block: np.ndarray,
                     k: int, number: int, blocks: int) -> dict[str, int]:
    """One block of `_rank_on_cluster`, on a worker."""
    from homerank.jobs.hygiene import quiet_library_warnings

    quiet_library_warnings()
    recommender = _worker_recommender(run_root, staging_root, settings, device)
    staging = RunDir(Path(staging_root))
    return rank_block(recommender, block, k, staging.rankings_staging, RunDir(Path(run_root)), number, blocks)


def _block_positions(rankings: pd.DataFrame, block: np.ndarray) -> np.ndarray:
    """For each row of ``rankings``, the position of its user in ``block`` (users are unique in a block)."""
    codes = pd.Index(block).get_indexer(rankings["user_id"])
    if (codes < 0).any():  # cannot happen: recommend answers exactly the users asked
        raise AssertionError("rank: a ranking row for a user outside its block")
    return codes


def _empty_rankings(user_index: pd.DataFrame, item_index: pd.DataFrame) -> pd.DataFrame:
    """No rows, the columns and dtypes of ``rankings/`` (the one part written when nobody has history)."""
    return pd.DataFrame({
        "user_id": pd.Series(dtype=user_index[schema.USER].dtype),
        "rank": pd.Series(dtype=np.int32),
        "item_id": pd.Series(dtype=item_index[schema.ITEM].dtype),
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


def write_embeddings(target: RunDir, scorer: Scorer, user_index: pd.DataFrame, item_index: pd.DataFrame,
                     search: ItemSearch) -> None:
    """``target.embeddings``: users.parquet and items.parquet (the id column in its original dtype, then
    ``embedding``, fixed_size_list<float32>[d]; users in model index order, items in item index order, so item
    row j is row j of ``items.faiss``) and the item index, swapped into place as one folder.

    The vectors are the scorer's final LightGCN embeddings. For a LightGCN scorer the score of (u, j) is their dot
    product; for the LightGCN + GF-CF blend (or the filter alone) exact scores need the scorer
    (``train/scorer.pt``, `homerank.gnn.scorer.Scorer`): the dot product is then only its LightGCN part. The Parquet
    schema metadata ``homerank.embeddings`` (JSON) says which."""
    note = {"format": "homerank.embeddings/1", "dim": int(scorer.user_embeddings.shape[1]), "scorer": scorer.kind,
            "score": ("dot product of the user and item vectors" if scorer.kind == "lightgcn" else
                      "the LightGCN part only: exact scores need train/scorer.pt (homerank.gnn.scorer.Scorer)"),
            "index": "items.faiss: cosine index over rows [x_j, sqrt(M^2 - |x_j|^2)]; query with [u, 0]"}
    with atomic_path(target.embeddings) as tmp:
        tmp.mkdir(parents=True)
        for path, vectors, table, id_column, index_column in (
                (target.user_embeddings, scorer.user_embeddings, user_index, schema.USER, schema.USER_INDEX),
                (target.item_embeddings, scorer.item_embeddings, item_index, schema.ITEM, schema.ITEM_INDEX)):
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
