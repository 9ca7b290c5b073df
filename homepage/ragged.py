"""One list per user in flat arrays (a CSR layout), read for a whole block of users at once: the lists the homepage
keeps per user (last-session items, recent queries) without a Python dict or a loop over users.

User k of ``users`` (sorted ids, (K,)) owns ``values[start[k] : start[k] + length[k]]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Ragged:
    """``users`` (K,) sorted ids; ``start``, ``length`` (K,) int64; ``values`` (V,) the lists one after the other."""

    users: pd.Index
    start: np.ndarray
    length: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, owners: np.ndarray, values: np.ndarray) -> Ragged:
        """The lists of ``values`` (V,) by their ``owners`` (V,) user ids, which must be grouped (each user's values
        together, in list order) and in ascending user order."""
        owners = np.asarray(owners)
        if not owners.size:
            return cls(pd.Index(owners), np.zeros(0, np.int64), np.zeros(0, np.int64), np.asarray(values))
        first = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        length = np.diff(np.r_[first, owners.size]).astype(np.int64)
        return cls(pd.Index(owners[first]), first.astype(np.int64), length, np.asarray(values))

    def rows(self, users: Any) -> np.ndarray:
        """The list row of each of ``users`` (B,), -1 for a user without a list."""
        if not len(self.users):
            return np.full(len(users), -1, dtype=np.int64)
        return self.users.get_indexer(pd.Index(np.asarray(users))).astype(np.int64)

    def padded(self, rows: np.ndarray, fill: Any = -1, width: int | None = None) -> np.ndarray:
        """The lists of ``rows`` (n,) (each >= 0) as an (n, w) array, padded with ``fill`` after each list's end;
        w = the longest of them (at least 1), or ``width`` (lists cut to it)."""
        lengths = self.length[rows]
        width = width if width is not None else max(int(lengths.max()) if lengths.size else 0, 1)
        columns = np.arange(width)
        valid = columns[None, :] < lengths[:, None]
        index = np.where(valid, self.start[rows][:, None] + columns[None, :], 0)
        taken = self.values[index] if self.values.size else np.zeros(index.shape, dtype=self.values.dtype)
        return np.where(valid, taken, np.asarray(fill, dtype=taken.dtype))
