"""One list per user in flat arrays (a CSR layout), read for a whole block of users at once: the lists the homepage
keeps per user (last-session items, recent queries, purchases, buy-again items) without a Python dict or a loop over
users. A dict of 10^6 users would also hold 10^6 objects whose reference counts, touched by a forked block worker,
copy their memory pages into the worker.

User k of ``users`` (sorted ids, (K,)) owns ``values[start[k] : start[k] + length[k]]``.
"""

from __future__ import annotations

from collections.abc import Mapping
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

    @classmethod
    def by_owner(cls, owners: Any, values: Any) -> Ragged:
        """`of` for owners in any order: each user's values keep the order they come in (a stable sort by user,
        O(V log V), no Python call per user)."""
        owners, values = np.asarray(owners), np.asarray(values)
        if not owners.size:
            return cls.of(owners, values)
        codes, distinct = pd.factorize(owners, sort=True)
        order = np.argsort(codes, kind="stable")
        return cls.of(np.asarray(distinct)[codes[order]], values[order])

    @classmethod
    def from_mapping(cls, lists: Mapping[Any, Any]) -> Ragged:
        """A mapping user id -> int positions (any iterable, e.g. a set: its iteration order), e.g. hand-made
        signals in tests."""
        users = list(lists)
        values = [np.fromiter(lists[user], dtype=np.int64) for user in users]
        owners = np.repeat(np.asarray(users) if users else np.zeros(0, dtype=np.int64), [len(v) for v in values])
        return cls.by_owner(owners, np.concatenate(values) if values else np.zeros(0, dtype=np.int64))

    def get(self, user: Any, default: Any = None) -> Any:
        """User ``user``'s list (a view of ``values``), ``default`` when the user has none (the user-by-user page
        builder's lookup)."""
        row = int(self.rows([user])[0])
        return self.values[self.start[row] : self.start[row] + self.length[row]] if row >= 0 else default

    def flat(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every entry of the lists of ``rows`` (B,) (-1: no list): (line (t,), values (t,)), line b for
        ``rows[b]``, each list in order."""
        lengths = np.where(rows >= 0, self.length[np.maximum(rows, 0)], 0) if self.length.size else \
            np.zeros(len(rows), dtype=np.int64)
        line = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        within = np.arange(line.size, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        starts = self.start[np.maximum(rows, 0)] if self.start.size else np.zeros(len(rows), dtype=np.int64)
        return line, self.values[starts[line] + within]

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
