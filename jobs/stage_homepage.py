"""Stage 6 — homepage: turn model scores, the catalogue and recent behaviour into a personalised page of
ordered sections per user, with rules applied across the whole page.

This stage only reads the run directory, scores the model's candidates (``candidates`` per user, with the
run's scorer, ensemble-aware) and writes the outputs; the homepage itself (sections, page rules, diversity,
merchandising, rule check and page quality) is ``homerank.homepage``, see ``homerank.homepage.build``.
A log without timestamps or event types (the lightgcn format) gets no homepage.

Writes ``homepage/`` (Parquet: user_id, section, section_title, slot, item_id, score, reason, explanation, with
a ``_SUCCESS.json`` manifest), ``homepage.jsonl`` (one object per user, rows in order), ``impressions/`` (one row
per slot shown: user_id, item_id, section, row, slot, run_id, served_at; the run id from ``run_id.txt``, written
once per run directory) and ``homepage_stats.json`` (page-rule check and page-quality metrics next to a plain
top-K baseline). Users come in blocks of ``homepage.block_users``, built in ``homepage.processes`` forked worker
processes (default one per core): each block scores its own users' model candidates (with the model on a GPU,
which a forked process cannot use, the GPU scores every user's candidates before the fork and the workers look
them up; in the stage's process when those lists would not fit in a quarter of the available memory), and is
written as soon as it is built, by the process that built it, as its own
``part-NNNNN.parquet`` in a staging folder (its impressions and JSON lines likewise); the datasets (manifest last)
and the JSON Lines file (the parts joined in block order) replace the previous ones only after the last block, so
a failure leaves the previous homepage as it was.
The shopper profiles (``etl/profiles/``) are read when ``profiles.enabled`` and the ETL published them (manifest
present); without them the homepage is built as before, explanations from the evidence that remains.
The ETL's ``etl/searches/`` (logs with a ``query`` column) and ``etl/last_session/`` are read when a
related_to_searches or continue_shopping section is configured and the ETL published them; without them those rows
are left out.
The train stage's content-only embeddings of catalogue items outside the graph (``train/cold_items.parquet``,
written with ``train.content``) are those items' vectors when the file is there; items without one keep the mean
vector of their category and price band (``homepage_stats.json``: ``item_vectors``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.errors import HomerankError
from homerank.engine.memory import large_allocations_mapped
from homerank.engine.split import SPLIT
from homerank.gnn.dot_top_k import dot_ranker, searches_exactly
from homerank.gnn.metrics import Ranker, top_k, users_per_block
from homerank.gnn.scorer import Scorer
from homerank.homepage.build import block_processes, build_pages
from homerank.homepage.candidates import CandidateFn
from homerank.homepage.export import jsonl_bytes
from homerank.jobs.artifacts import read_edges, read_embedding_table, read_parquet_parts, require
from homerank.jobs.config import JobConfig
from homerank.jobs.recommend import ItemSearch
from homerank.jobs.rundir import RunDir, atomic_path, ensure_run_id, publish_parquet_parts, read_json, write_json

log = logging.getLogger(__name__)


def run_homepage(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    """Build every user's page from the run's artifacts and write the outputs; returns the stats written to
    ``homepage_stats.json``. Until the setup's peak is past (every interaction held), large allocations are mapped
    and each freed one goes back to the system at once (at 3 * 10^7 events the setup's peak 2.20 -> 1.91 GiB);
    then glibc's heap reuse again, for the hot loops of the neighbour search and the blocks."""
    with large_allocations_mapped() as setup_peak_past:
        return _run_homepage(run, config, backend, setup_peak_past)


def _run_homepage(run: RunDir, config: JobConfig, backend: Backend, setup_peak_past: Callable[[], Any]
                  ) -> dict[str, Any]:
    settings = config.homepage
    edges = read_edges(run, [schema.USER, schema.ITEM, SPLIT])  # the columns the pages read (a model item's
    # training popularity maps the item ids through the item index: its own column would be 0.14 GB at 3 * 10^7)
    interactions = read_interactions(run)
    if schema.LAST_TS not in interactions.columns:  # e.g. the lightgcn format: pairs without time or event type
        stats = {"skipped": "the input has no timestamps or event types (lightgcn format): no homepage"}
        log.info("homepage: %s", stats["skipped"])
        write_json(run.homepage_stats, stats)
        return stats
    user_index = pd.read_parquet(require(run.user_index, "etl"))
    item_index = pd.read_parquet(require(run.item_index, "etl"))
    model = Scorer.load(require(run.scorer, "train"))
    user_emb, item_emb = model.user_embeddings, model.item_embeddings
    etl = read_json(require(run.etl_stats, "etl"))
    ref_time = pd.Timestamp(etl.get("reference_time") or interactions[schema.LAST_TS].max())
    # users scored per (B, I) product: rank.batch_size, fewer on the CPU when one block of scores would pass 256 MiB
    # (every worker process holds one)
    batch = users_per_block(config.rank.batch_size, item_emb.shape[0], backend.torch_device)
    scorer = model.score_fn(backend.torch_device)
    if user_emb.shape[0]:
        scorer(torch.zeros(1, dtype=torch.long))  # built once here, before the block workers fork: e.g. a linear
        # filter's item operator (homerank.gnn.linear_filter), which the workers share instead of building their own
    candidates = _model_candidates(scorer, batch, backend.torch_device, dot_ranker(model, backend.torch_device))
    candidate_source = "exact scores of every item"
    if searches_exactly(model, backend.torch_device) and model.num_items >= config.rank.index_min_items \
            and model.num_items > config.rank.index_exact_items:  # the rank stage's saved index is an HNSW graph
        candidates = DeferredIndexCandidates(run, model, config.rank.index_exact_items, user_emb.numpy(),
                                             item_emb.numpy(), candidates)
        candidate_source = "faiss HNSW item index (embeddings/items.faiss), exact scores"
    log.info("homepage: model candidates from %s", candidate_source)
    fork = backend.model_device == "cpu"
    if not fork and user_emb.shape[0] and block_processes(settings.processes, 2) > 1:
        held = _held_candidates(candidates, user_emb.shape[0], min(settings.candidates, item_emb.shape[0]))
        if held is not None:  # scored on the GPU here; the forked CPU workers only look their users' lists up
            candidates, fork = held, True
    catalogue = pd.read_parquet(run.catalogue) if run.catalogue.exists() else None
    rankings = ParquetParts(run.rankings, ["user_id", "item_id"]) if run.rankings.exists() else None
    profiles = _read_profiles(run) if config.profiles.enabled else None
    cold_items = _read_cold_items(run)
    kinds = {section.kind for section in settings.sections}
    searches = _read_dataset(run.searches, SEARCH_COLUMNS) if "related_to_searches" in kinds else None
    sessions = _read_dataset(run.last_session, SESSION_COLUMNS) if "continue_shopping" in kinds else None
    staging = run.homepage.with_name(".homepage.parts")  # the blocks' parts, published as one dataset at the end
    impressions = run.impressions.with_name(".impressions.parts")
    jsonl_parts = run.homepage_jsonl.with_name(".homepage.jsonl.parts")
    for folder in (staging, impressions, jsonl_parts):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    try:
        parts = _PartWriter(staging, jsonl_parts, impressions, ensure_run_id(run), ref_time)
        frames = [interactions, edges, profiles, searches, sessions]
        del interactions, edges, profiles, searches, sessions  # build_pages holds the only references and drops
        # them once the page-wide signals are made, before the blocks
        homepage = build_pages(candidates, None, item_emb, user_emb, frames.pop(0), frames.pop(0),
                               user_index, item_index, catalogue, ref_time, settings, rankings,
                               on_block=parts.write, profiles=frames.pop(0), cold_items=cold_items,
                               searches=frames.pop(0), sessions=frames.pop(0), fork=fork, first_seen=first_seen(run),
                               on_setup_peak_past=setup_peak_past)
        with atomic_path(run.homepage_jsonl) as jsonl_tmp:
            parts.join_jsonl(jsonl_tmp)
        publish_parquet_parts(staging, run.homepage, homepage.page)
        publish_parquet_parts(impressions, run.impressions, parts.impressions_of(homepage.page))
    finally:
        for folder in (staging, impressions, jsonl_parts):
            shutil.rmtree(folder, ignore_errors=True)
    stats = {**homepage.stats, "candidates": candidate_source}
    write_json(run.homepage_stats, stats)
    log.info("homepage: %d users, %d slots, sections %s", stats["users"], stats["rows"], stats["sections"])
    return stats


@dataclass(frozen=True)
class ParquetParts:
    """The part files of a dataset (``folder/part-*.parquet``), read one at a time (``columns`` only) each time it is
    iterated: the rank stage's rankings, written in blocks of users, as the homepage's quality baseline."""

    folder: Path
    columns: list[str]

    def __iter__(self) -> Iterator[pd.DataFrame]:
        parts = sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else [self.folder]
        for part in parts:
            yield pd.read_parquet(part, columns=self.columns)


PROFILE_COLUMNS = ("segment", "segment_name")  # plus top_category_k / top_category_share_k


def _read_profiles(run: RunDir) -> pd.DataFrame | None:
    """The columns of ``etl/profiles/`` the homepage uses, None when the ETL published none (profiles disabled, or
    a run older than them)."""
    if not (run.profiles / "_SUCCESS.json").exists():
        log.info("homepage: no shopper profiles in %s: no segment fallbacks, explanations without category shares",
                 run.profiles)
        return None
    names = pq.ParquetDataset(run.profiles).schema.names
    wanted = [schema.USER, *(c for c in names if c in PROFILE_COLUMNS or c.startswith("top_category_"))]
    return pd.read_parquet(run.profiles, columns=wanted)


HOMEPAGE_EVENTS = ("view", "cart", "purchase")  # the event counts the pages read (last viewed, explanations, buy again)
PRESENCE_EVENTS = ("view", "cart")  # of those, the pages read only whether one happened (count > 0)


def read_interactions(run: RunDir) -> pd.DataFrame:
    """The columns of the ETL's ``etl/interactions/`` that the pages read — user, item, weight, ``last_ts`` and the
    counts of `HOMEPAGE_EVENTS` — with the purchase count (``n_purchase``) as int32 (a (user, item) pair's count of
    one event type stays far below 2^31; a cast that would overflow raises) and the counts of `PRESENCE_EVENTS` as
    booleans (count > 0: all the pages read of them). At 3 * 10^7 events (18.2M pairs) the narrow counts take 0.40 GB
    less, and ``first_ts`` (only its least value is read, `first_seen`) and the other events' counts 0.22 GB less, in
    the process that forks the block workers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    path = require(run.interactions, "etl")
    names = pq.ParquetDataset(path).schema.names
    wanted = [schema.USER, schema.ITEM, schema.WEIGHT, schema.LAST_TS,
              *(schema.count_column(event) for event in HOMEPAGE_EVENTS)]
    presence = {schema.count_column(event) for event in PRESENCE_EVENTS}

    def narrowed(table: pa.Table) -> pa.Table:
        for position, name in enumerate(table.column_names):
            if name.startswith(schema.count_column("")) and pa.types.is_integer(table.schema.field(name).type):
                narrow = pc.greater(table[name], 0) if name in presence else table[name].cast(pa.int32())
                table = table.set_column(position, name, narrow)
        return table

    # part by part (the ETL writes one part per user partition): the frame and one part at the read's peak
    return read_parquet_parts(path, [name for name in names if name in wanted], narrowed)


def first_seen(run: RunDir) -> pd.Timestamp | None:
    """The least ``first_ts`` of ``etl/interactions/`` (None without that column, or without rows), read batch by
    batch: one column's minimum, not the column."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(require(run.interactions, "etl"), format="parquet")
    if schema.FIRST_TS not in dataset.schema.names:
        return None
    least = None
    for batch in dataset.to_batches(columns=[schema.FIRST_TS]):
        value = pc.min(batch.column(0)).as_py()
        if value is not None and (least is None or value < least):
            least = value
    return None if least is None else pd.Timestamp(least)


SEARCH_COLUMNS = [schema.USER, schema.TS, schema.QUERY]
# what the continue_shopping row reads of etl/last_session/ (`homerank.homepage.last_session.last_session`)
SESSION_COLUMNS = [schema.USER, schema.ITEM, schema.LAST_TS, schema.EVENT, "session_start"]


def _read_dataset(path: Path, columns: list[str] | None) -> pd.DataFrame | None:
    """``columns`` (None: all) of an ETL dataset, None when the ETL published none there (its manifest missing: a log
    without searches, ``profiles.last_session: false``, or a run older than them)."""
    if not (path / "_SUCCESS.json").exists():
        log.info("homepage: no %s: its section is left out", path)
        return None
    return pd.read_parquet(path, columns=columns)


def _read_cold_items(run: RunDir) -> tuple[pd.Series, np.ndarray] | None:
    """The ids and content-only vectors (n, d) of ``train/cold_items.parquet``, None when the train stage wrote none
    (``train.content`` off, ``write_cold_items: false``, or a run older than it). The train stage removes the file
    before it trains, so one that is there belongs to the run's scorer."""
    path = run.cold_items
    if not path.exists():
        log.info("homepage: no %s: items outside the graph get their category and price band's mean vector", path)
        return None
    try:
        ids, vectors = read_embedding_table(path, schema.ITEM)
    except HomerankError:
        raise HomerankError(f"{path}: not a readable homerank embeddings file; run the train stage again "
                            "(`homerank train --out RUN_DIR`)") from None
    log.info("homepage: content vectors of %d cold items from %s", len(ids), path)
    return ids, vectors


IMPRESSION_COLUMNS = (schema.USER, schema.ITEM, "section", "row", "slot", "run_id", "served_at")


def impressions_of(page: pd.DataFrame, run_id: str, served_at: pd.Timestamp) -> pd.DataFrame:
    """One impression per slot of ``page`` (rows grouped by user, each section's slots together, sections in page
    order): user_id, item_id, section, row (the section's position on the user's page, 1-based), slot, run_id and
    served_at (the run's reference time, datetime64[ns])."""
    users, sections = page[schema.USER], page["section"]
    new_row = (users != users.shift()) | (sections != sections.shift())
    return pd.DataFrame({
        schema.USER: users.to_numpy(), schema.ITEM: page[schema.ITEM].to_numpy(),
        "section": sections.astype("string").to_numpy(),
        "row": new_row.astype("int64").groupby(users.to_numpy(), sort=False).cumsum().to_numpy(),
        "slot": page["slot"].astype("int64").to_numpy(),
        "run_id": pd.array([run_id] * len(page), dtype="string"),
        "served_at": np.full(len(page), served_at.to_datetime64(), dtype="datetime64[ns]"),
    })


def _model_candidates(scorer: Any, batch_size: int, device: torch.device, ranker: Ranker | None = None
                      ) -> CandidateFn:
    """The run's scorer as a `homerank.homepage.candidates.CandidateFn`: the top k model items of given model
    rows, scored ``batch_size`` users at a time on ``device`` (the homepage's blocks score their own users), or
    found by ``ranker`` (`homerank.gnn.dot_top_k.dot_ranker`: faiss's exact search for a dot-product scorer on
    the CPU, built before the fork and shared by the block workers)."""
    def lists_of(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        users = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        items, scores = (ranker(users, k, None) if ranker is not None else
                         top_k(scorer, users, k, None, batch_size, device))
        return items.numpy(), scores.numpy()
    return lists_of


INDEX_GATHER_USERS = 512  # users whose candidates' vectors are gathered at once: (512, k, d) floats


def _index_candidates(search: ItemSearch, user_vectors: np.ndarray, item_vectors: np.ndarray,
                      exact: CandidateFn) -> CandidateFn:
    """The model candidates of a large catalogue from the item index the rank stage saved (an HNSW graph over the
    lifted item vectors, `homerank.jobs.recommend.ItemSearch`): each user's k nearest by u . x_i found by the index
    in O(log I) instead of scoring all I items, then scored exactly (e_u . e_i, (n, k)) and put best first. A user
    for whom the index found fewer than k items is scored by ``exact``. The lists are approximate where HNSW misses
    an item of the exact top k (the rank stage's recall check: `python -m bench.rank_index_recall`)."""
    def lists_of(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        k = min(k, item_vectors.shape[0])
        queries = user_vectors[rows]
        found = search.candidates(queries, k)  # (n, k) best first by the index, -1 where it found fewer
        scores = np.empty(found.shape, dtype=np.float32)
        for start in range(0, rows.size, INDEX_GATHER_USERS):
            part = slice(start, start + INDEX_GATHER_USERS)
            vectors = item_vectors[np.maximum(found[part], 0)]  # (m, k, d)
            scores[part] = np.einsum("md,mkd->mk", queries[part], vectors)
        short = (found < 0).any(axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        items, scores = np.take_along_axis(found, order, axis=1), np.take_along_axis(scores, order, axis=1)
        if short.any():
            items[short], scores[short] = exact(rows[short], k)
        return items, scores
    return lists_of


class DeferredIndexCandidates:
    """`_index_candidates` from the rank stage's saved item index, loaded by `prepare` (or the first call), not
    before: `homerank.homepage.build.build_pages` prepares it once its setup has freed the interactions, before the
    block workers fork, so the index and its search structures (0.2 GiB at 3 * 10^7 events) are not held at the
    setup's peak and are still shared by the workers."""

    def __init__(self, run: RunDir, model: Scorer, exact_items: int, user_vectors: np.ndarray,
                 item_vectors: np.ndarray, exact: CandidateFn) -> None:
        self.run, self.model, self.exact_items = run, model, exact_items
        self.user_vectors, self.item_vectors, self.exact = user_vectors, item_vectors, exact
        self.lists_of: CandidateFn | None = None

    def prepare(self) -> None:
        if self.lists_of is None:
            search = ItemSearch.for_run(self.run, self.model, self.exact_items)
            self.lists_of = _index_candidates(search, self.user_vectors, self.item_vectors, self.exact)

    def __call__(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.prepare()
        assert self.lists_of is not None
        return self.lists_of(rows, k)


HELD_CANDIDATES_SHARE = 0.25  # the largest share of the available memory every user's candidate lists may take


def _held_candidates(lists_of: CandidateFn, num_users: int, k: int,
                     memory_share: float = HELD_CANDIDATES_SHARE) -> CandidateFn | None:
    """Every model user's top ``k`` from ``lists_of``, computed now and held in this process as (U, k) int32 items
    and float32 scores (8 U k bytes), and a `CandidateFn` that looks rows up in them (the first k' <= k columns of
    a row are its top k'). This is how a homepage whose model is on a GPU uses forked CPU workers: CUDA does not
    survive a fork, so the GPU scores every user before the fork and the workers only read the lists. None when
    the lists would take more than ``memory_share`` of the memory available now (the stage then builds the blocks
    in its own process, scoring as it goes)."""
    import psutil

    needed = 8 * num_users * k
    available = psutil.virtual_memory().available
    if needed > memory_share * available:
        log.info("homepage: every user's %d candidates would take %.1f GiB (%.1f GiB available): blocks are built "
                 "in this process, with the model on the GPU", k, needed / 2**30, available / 2**30)
        return None
    items = np.empty((num_users, k), dtype=np.int32)
    scores = np.empty((num_users, k), dtype=np.float32)
    step = 65_536
    for start in range(0, num_users, step):
        rows = np.arange(start, min(start + step, num_users), dtype=np.int64)
        items[rows], scores[rows] = lists_of(rows, k)
    log.info("homepage: the candidates of %d users scored on the model's device (%.2f GiB held); blocks are built "
             "in forked CPU workers", num_users, needed / 2**30)

    def held(rows: np.ndarray, k_rows: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        return items[rows, :k_rows].astype(np.int64), scores[rows, :k_rows]
    return held


class _PartWriter:
    """Writes block N's page rows as ``part-NNNNN.parquet`` into ``staging``, its impressions (`impressions_of`)
    as ``part-NNNNN.parquet`` into ``impressions`` and its users' JSON lines (see homerank.homepage.export) as
    ``part-NNNNN.jsonl`` into ``jsonl_parts``, in whichever process built the block; `join_jsonl` concatenates the
    JSON lines in block order at the end."""

    def __init__(self, staging: Path, jsonl_parts: Path, impressions: Path, run_id: str,
                 served_at: pd.Timestamp) -> None:
        self.staging, self.jsonl_parts = staging, jsonl_parts
        self.impressions, self.run_id, self.served_at = impressions, run_id, pd.Timestamp(served_at)

    def impressions_of(self, page: pd.DataFrame) -> pd.DataFrame:
        return impressions_of(page, self.run_id, self.served_at)

    def write(self, number: int, page: pd.DataFrame) -> None:
        if page.empty:
            return
        name = f"part-{number:05d}"
        page.to_parquet(self.staging / f"{name}.parquet", index=False)
        self.impressions_of(page).to_parquet(self.impressions / f"{name}.parquet", index=False)
        with open(self.jsonl_parts / f"{name}.jsonl", "wb") as lines:
            lines.write(jsonl_bytes(page))

    def join_jsonl(self, path: Path) -> None:
        """All blocks' JSON lines, in block order, into ``path`` (copied by the kernel where it can: 3.4 GB at
        3 * 10^7 events)."""
        with open(path, "wb") as out:
            for part in sorted(self.jsonl_parts.glob("part-*.jsonl")):
                with open(part, "rb") as lines:
                    append_file(lines, out)


def append_file(source: BinaryIO, out: BinaryIO) -> None:
    """The whole of ``source`` (a file open for reading, at its start) appended to ``out`` (a file open for writing):
    by ``os.sendfile`` inside the kernel (Linux), else read and written in 4 MiB pieces."""
    size = os.fstat(source.fileno()).st_size
    offset = 0
    out.flush()
    try:
        while offset < size:
            sent = os.sendfile(out.fileno(), source.fileno(), offset, size - offset)
            if not sent:
                break
            offset += sent
    except (AttributeError, OSError):  # no sendfile here, or not between these files: the portable way
        pass
    if offset < size:
        source.seek(offset)
        out.seek(0, os.SEEK_END)
        shutil.copyfileobj(source, out, 1 << 22)
