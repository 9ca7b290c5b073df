"""Encode original user/item ids to contiguous integers and back.

Users are numbered ``0..U-1`` and items ``0..I-1`` in sorted order of their original id, so the encoding
is deterministic. The two mapping tables (``user_index.parquet``: user_id, user_index and
``item_index.parquet``: item_id, item_index) are saved in the run directory and are what `rank` uses to
write original ids back out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema


def fit_index(ids: Any, id_column: str, index_column: str) -> pd.DataFrame:
    """Mapping table (id_column, index_column) for the distinct values of ``ids`` in sorted order."""
    unique = pd.Series(pd.unique(pd.Series(ids)), name=id_column).sort_values(kind="stable")
    return pd.DataFrame({id_column: unique.to_numpy(), index_column: np.arange(len(unique), dtype="int64")})


def encode_edges(edges: pd.DataFrame, user_index: pd.DataFrame, item_index: pd.DataFrame) -> pd.DataFrame:
    """Add user_index / item_index columns (inner join: rows with unknown ids are dropped)."""
    out = edges.merge(user_index, on=schema.USER, how="inner").merge(item_index, on=schema.ITEM, how="inner")
    return out


def decode(indices: np.ndarray, table: pd.DataFrame, id_column: str, index_column: str) -> np.ndarray:
    """Original ids for an array of contiguous indices (table sorted by index)."""
    ordered = table.sort_values(index_column)[id_column].to_numpy()
    return ordered[indices]


def extend_index(previous: pd.DataFrame, ids: Any, id_column: str, index_column: str) -> pd.DataFrame:
    """``previous`` (id_column, index_column: 0..n-1) extended by the distinct ``ids`` it lacks, numbered n, n+1, ...
    in sorted id order: every id of ``previous`` keeps its index (a warm start's id maps are appended to, never
    re-encoded). Returns the table in index order; ids of ``previous`` absent from ``ids`` stay in it."""
    previous = previous.sort_values(index_column, kind="stable").reset_index(drop=True)
    if not np.array_equal(previous[index_column].to_numpy(), np.arange(len(previous))):
        raise ValueError(f"{index_column}: the previous table is not numbered 0..{len(previous) - 1}")
    wanted = pd.Series(pd.unique(pd.Series(ids)), name=id_column)
    new = wanted[~wanted.isin(previous[id_column])].sort_values(kind="stable").to_numpy()
    extended = pd.DataFrame({id_column: np.concatenate([previous[id_column].to_numpy(), new]),
                             index_column: np.arange(len(previous) + len(new), dtype="int64")})
    if len(previous) and len(new):  # one dtype for old and new ids (object when numpy had to widen them)
        extended[id_column] = extended[id_column].astype(previous[id_column].dtype)
    return extended


def index_of(table: pd.DataFrame, ids: Any, id_column: str, index_column: str) -> np.ndarray:
    """The ``index_column`` value of each of ``ids`` in ``table`` ((n,) int64); every id must be in the table."""
    position = pd.Index(table[id_column]).get_indexer(pd.Series(ids))
    if (position < 0).any():
        raise KeyError(f"{int((position < 0).sum())} id(s) missing from the {index_column} table")
    return table[index_column].to_numpy()[position].astype("int64")
