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
