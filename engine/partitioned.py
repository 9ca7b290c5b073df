"""The ETL after ingest as one dask graph on the workers, partitioned by user.

The clean events are range-partitioned by user id once (``sort_values``: every event of a user lands in one
partition, and the partitions follow each other in user order). Everything per user is then local to its
partition:

    aggregate   one edge per (user, item): weight sum, first/last time, per-type counts    (map_partitions)
    k-core      round r: item degrees d_i over all partitions (a small series, I rows, to the client); each
                partition keeps its edges with d_i >= min_item and d_u >= min_user, d_u counted locally
    encode      user_index = the user's rank in sorted id order = the partition's offset + the local rank
                (offsets from per-partition user counts); item_index from the sorted item table (I rows)
    split       the per-user temporal split (`homerank.engine.split.temporal_split`) on each partition
    re-weight   training edges re-aggregated from the user's events up to the user's cutoff, on the same
                partition (events and edges share the partitioning)

Only small tables reach the client: the item degrees of each k-core round, per-partition counts, the item
table and the id maps. Outputs are written partition by partition (`write_partitions`); because partitions
are in user order and sorted inside by (user, item), the datasets read back in (user_index, item_index) order.

Works on pandas and cuDF partitions alike (`Backend.dask_config` sets ``dataframe.backend``): the local steps use
the shared pandas/cuDF API and every frame merged into the graph is of the graph's own backend.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.config import SplitConfig
from homerank.engine.sorted_events import (
    aggregate_sorted,
    array_module,
    frame_library,
    nanoseconds,
    positions_in,
    sort_and_drop_duplicates,
)
from homerank.engine.split import SPLIT, SPLIT_DTYPE, SPLIT_NAMES, split_labels

log = logging.getLogger(__name__)

ROWS_PER_PARTITION = 2_000_000


def partition_by_user(events: dd.DataFrame, rows: int, rows_per_partition: int = ROWS_PER_PARTITION,
                      min_partitions: int = 1) -> dd.DataFrame:
    """Range-partition events by user id (a sort: one shuffle), about ``rows_per_partition`` rows each."""
    npartitions = max(min_partitions, -(-rows // rows_per_partition))
    return events.sort_values(schema.USER, npartitions=npartitions)


def events_by_user(events: dd.DataFrame, rows: int, rows_per_partition: int = ROWS_PER_PARTITION,
                   min_partitions: int = 1) -> dd.DataFrame:
    """`partition_by_user`, then every partition in (user, item, time) order without exact duplicates
    (`homerank.engine.sorted_events.sort_and_drop_duplicates`): the input of every later per-user step."""
    by_user = partition_by_user(events, rows, rows_per_partition, min_partitions)
    return by_user.map_partitions(sort_and_drop_duplicates, meta=by_user._meta)


def aggregate_by_user(weighted: dd.DataFrame, event_types: list[str]) -> dd.DataFrame:
    """One edge per (user, item), in (user, item) order inside each partition (users are partition-local); the
    events must be in the (user, item, time) order of `homerank.engine.sorted_events.sort_and_drop_duplicates`."""
    meta = aggregate_sorted(weighted._meta, event_types)
    return weighted.map_partitions(aggregate_sorted, event_types, meta=meta)


def _kcore_step(edges: pd.DataFrame, item_degree: pd.Series, min_user: int, min_item: int) -> pd.DataFrame:
    """One simultaneous k-core round on a partition: item degrees are global, user degrees local."""
    user_degree = edges.groupby(schema.USER)[schema.ITEM].transform("size")
    keep_items = item_degree.index[item_degree >= min_item]
    mask = (user_degree >= min_user) & edges[schema.ITEM].isin(keep_items)
    return edges[mask]


def kcore_by_user(edges: dd.DataFrame, min_user: int, min_item: int, max_rounds: int = 1000
                  ) -> tuple[dd.DataFrame, int, int]:
    """The iterated k-core of `homerank.engine.kcore.kcore_filter` (same rounds, same result) on user partitions.

    Each round persists the surviving edges on the workers and brings back only their count and item degrees
    (one round trip per round). Returns (surviving edges, persisted; rounds; their count)."""
    current = edges.persist()
    count, item_degree = dask.compute(current.shape[0], current[schema.ITEM].value_counts())
    for round_ in range(1, max_rounds + 1):
        item_degree = _host(item_degree)  # (I,) on the client
        step = current.map_partitions(_kcore_step, item_degree, min_user, min_item, meta=current._meta).persist()
        left, next_degree = dask.compute(step.shape[0], step[schema.ITEM].value_counts())
        if int(left) == int(count):
            return current, round_, int(count)
        log.debug("k-core round %d: %d edges left", round_, left)
        current, count, item_degree = step, left, next_degree
    return current, max_rounds, int(count)


def id_tables(core: dd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    """(user_index, item_index, users per partition). Users: the partitions' sorted distinct ids, in partition
    order (user order), numbered 0..U-1; items: the distinct ids sorted, numbered 0..I-1. One round trip."""
    users_per_part = core.map_partitions(lambda frame: frame[schema.USER].drop_duplicates().sort_values(),
                                         meta=core._meta[schema.USER])
    counts = core.map_partitions(lambda frame: pd.Series([frame[schema.USER].nunique()]), meta=(None, "int64"))
    users, per_partition, items = dask.compute(users_per_part, counts, core[schema.ITEM].unique())
    users = _host(users).reset_index(drop=True)
    items = _host(items).sort_values(ignore_index=True)  # keeps the ids' dtype (string ids stay strings)
    user_index = pd.DataFrame({schema.USER: users, schema.USER_INDEX: np.arange(len(users), dtype="int64")})
    item_index = pd.DataFrame({schema.ITEM: items, schema.ITEM_INDEX: np.arange(len(items), dtype="int64")})
    if not user_index[schema.USER].is_monotonic_increasing or user_index[schema.USER].duplicated().any():
        raise AssertionError("user partitions overlap or are out of order")  # pragma: no cover - sort_values
    return user_index, item_index, [int(c) for c in _host(per_partition)]


def _encode_split(edges: Any, events: Any, offset: Any, item_index: pd.DataFrame, split: SplitConfig,
                  event_types: list[str]) -> Any:
    """On one user partition: indices, the temporal split, and training edges re-weighted from the events up to
    each user's cutoff. ``edges``: the partition's k-core edges in (user, item) order; ``events``: its weighted
    events in (user, item, time) order. Returns the edges in (user_index, item_index) order (the input order).

    With U_p users and E_p edges in the partition: user_index = offset + rank of the user id among the partition's
    users; item_index = position of the item id in the sorted item table; the split follows
    `homerank.engine.split.split_labels`; a training edge's values are those of `aggregate_sorted` over the
    user's events at or before the user's cutoff (all of them when the user has nothing held out)."""
    xp = array_module(edges)
    lib = frame_library(edges)
    offset = int(np.asarray(_host(offset)).ravel()[0]) if not isinstance(offset, int) else offset
    edges = edges.reset_index(drop=True)
    user_codes, users = edges[schema.USER].factorize(sort=True)
    user_codes = xp.asarray(user_codes).astype(xp.int64)
    items = lib.Index(_like(edges, item_index)[schema.ITEM])
    item_codes = xp.asarray(items.get_indexer(edges[schema.ITEM])).astype(xp.int64)
    labels, cutoffs = split_labels(user_codes, item_codes, nanoseconds(edges[schema.FIRST_TS]), len(users), split)
    out = edges.copy()
    out[schema.USER_INDEX] = user_codes + offset
    out[schema.ITEM_INDEX] = item_codes
    # the events of k-core users at or before their cutoff, re-aggregated: every training edge is one of the runs
    event_users = xp.asarray(users.get_indexer(events[schema.USER])).astype(xp.int64)
    limit = xp.where(event_users >= 0, cutoffs[xp.maximum(event_users, 0)], xp.int64(-1) << 62)
    before = events.take(xp.flatnonzero(nanoseconds(events[schema.TS]) <= limit))
    weights = aggregate_sorted(before, event_types)
    weight_items = xp.asarray(items.get_indexer(weights[schema.ITEM])).astype(xp.int64)
    weight_users = xp.asarray(users.get_indexer(weights[schema.USER])).astype(xp.int64)
    known = xp.flatnonzero(weight_items >= 0)  # runs of items outside the k-core are not edges
    width = max(len(items), 1)
    run_keys = (weight_users * width + weight_items)[known]
    train = labels == 0
    rows = positions_in(run_keys, (user_codes * width + item_codes)[train])
    value_columns = [schema.WEIGHT, schema.FIRST_TS, schema.LAST_TS, *(schema.count_column(t) for t in event_types)]
    taken = xp.zeros(len(edges), dtype=xp.int64)
    taken[train] = known[rows]
    aligned = weights[value_columns].take(taken).reset_index(drop=True)
    keep = lib.Series(~train)
    for column in value_columns:
        out[column] = out[column].where(keep, aligned[column])
    out[SPLIT] = lib.Series(SPLIT_NAMES, dtype=SPLIT_DTYPE).take(labels).reset_index(drop=True)
    return out[[schema.USER, schema.ITEM, schema.USER_INDEX, schema.ITEM_INDEX, SPLIT, *value_columns]]


def encode_and_split(core: dd.DataFrame, weighted: dd.DataFrame, item_index: pd.DataFrame,
                     users_per_partition: list[int], split: SplitConfig, event_types: list[str]) -> dd.DataFrame:
    """`_encode_split` on every user partition; ``core`` and ``weighted`` share the user partitioning."""
    if core.npartitions != weighted.npartitions:  # pragma: no cover - both come from one partitioning
        raise AssertionError("edges and events are not partitioned alike")
    offsets = np.concatenate([[0], np.cumsum(users_per_partition)[:-1]]).astype("int64")
    offset_frame = dd.from_pandas(pd.DataFrame({"offset": offsets}), npartitions=len(offsets), sort=False)
    table = dask.delayed(item_index)  # one copy per worker, not one per task
    sample = _encode_split(core._meta, weighted._meta, 0, item_index.iloc[:0], split, event_types)
    return dd.map_partitions(_encode_split, core, weighted, offset_frame, table, split, event_types, meta=sample,
                             align_dataframes=False, enforce_metadata=False)


def write_partitions(frame: dd.DataFrame, folder: Path, compute: bool = True) -> Any:
    """Each partition as ``part-NNNNN.parquet`` in ``folder``, written by the worker that holds it; with
    ``compute=False`` the write is returned lazily, to run in one `dask.compute` with other results."""
    folder.mkdir(parents=True, exist_ok=True)
    return frame.to_parquet(str(folder), write_index=False, write_metadata_file=False, compute=compute,
                            name_function=lambda number: f"part-{number:05d}.parquet")


def _like(frame: Any, table: pd.DataFrame) -> Any:
    """A small pandas table in the frame library of ``frame`` (cuDF partitions merge only with cuDF frames)."""
    if isinstance(frame, pd.DataFrame) or isinstance(table, type(frame)):
        return table
    return type(frame).from_pandas(table)  # cudf.DataFrame.from_pandas: written for the GPU backend, never run here


def _host(value: Any) -> Any:
    return value.to_pandas() if hasattr(value, "to_pandas") else value


def worker_count() -> int:
    """Workers of the active distributed client; without one, the local scheduler's threads (the cores)."""
    try:
        from distributed import default_client

        return max(1, len(default_client().scheduler_info().get("workers", {})))
    except (ImportError, ValueError):
        return os.cpu_count() or 1
