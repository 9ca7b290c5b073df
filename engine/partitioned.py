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
from homerank.engine.interactions import aggregate_edges
from homerank.engine.split import CUTOFF, SPLIT, temporal_split

log = logging.getLogger(__name__)

ROWS_PER_PARTITION = 2_000_000


def partition_by_user(events: dd.DataFrame, rows: int, rows_per_partition: int = ROWS_PER_PARTITION,
                      min_partitions: int = 1) -> dd.DataFrame:
    """Range-partition events by user id (a sort: one shuffle), about ``rows_per_partition`` rows each."""
    npartitions = max(min_partitions, -(-rows // rows_per_partition))
    return events.sort_values(schema.USER, npartitions=npartitions)


def _local_edges(events: pd.DataFrame, event_types: list[str]) -> pd.DataFrame:
    edges = aggregate_edges(events, event_types)
    return edges.sort_values([schema.USER, schema.ITEM]).reset_index(drop=True)


def aggregate_by_user(weighted: dd.DataFrame, event_types: list[str]) -> dd.DataFrame:
    """One edge per (user, item), sorted by (user, item) inside each partition (users are partition-local)."""
    meta = _local_edges(weighted._meta, event_types)
    return weighted.map_partitions(_local_edges, event_types, meta=meta)


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


def _encode_split(edges: pd.DataFrame, events: pd.DataFrame, offset: Any, item_index: pd.DataFrame,
                  split: SplitConfig, event_types: list[str]) -> pd.DataFrame:
    """On one user partition: indices, the temporal split, and training edges re-weighted from the events up to
    each user's cutoff. Returns the partition's final edges sorted by (user_index, item_index)."""
    offset = int(np.asarray(_host(offset)).ravel()[0]) if not isinstance(offset, int) else offset
    item_index = _like(edges, item_index)
    users = edges[[schema.USER]].drop_duplicates().sort_values(schema.USER).reset_index(drop=True)
    users[schema.USER_INDEX] = users.index + offset  # a RangeIndex: the same on pandas and cuDF
    encoded = edges.merge(users, on=schema.USER).merge(item_index, on=schema.ITEM)
    split_edges, cutoffs = temporal_split(encoded, split)
    value_columns = [schema.WEIGHT, schema.FIRST_TS, schema.LAST_TS, *(schema.count_column(t) for t in event_types)]
    train = split_edges[split_edges[SPLIT] == "train"]
    keys = train[[schema.USER, schema.ITEM, schema.USER_INDEX]].merge(cutoffs, on=schema.USER_INDEX, how="left")
    keys = keys.drop(columns=[schema.USER_INDEX])
    keys[CUTOFF] = keys[CUTOFF].astype("datetime64[ns]")
    joined = events.merge(keys, on=[schema.USER, schema.ITEM], how="inner")
    before = joined[joined[CUTOFF].isna() | (joined[schema.TS] <= joined[CUTOFF])].drop(columns=[CUTOFF])
    weights = aggregate_edges(before, event_types)
    train_rows = train.drop(columns=value_columns).merge(weights, on=[schema.USER, schema.ITEM], how="left")
    if train_rows[schema.WEIGHT].isna().any():  # pragma: no cover - every train edge has an event <= cutoff
        raise AssertionError("training edge without events before its cutoff")
    held_out = split_edges[split_edges[SPLIT] != "train"]
    out = pd.concat([train_rows, held_out[train_rows.columns]], ignore_index=True)
    return out.sort_values([schema.USER_INDEX, schema.ITEM_INDEX], kind="stable").reset_index(drop=True)


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
