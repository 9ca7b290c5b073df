"""Per-user lists of catalogue positions (what each user bought, their buy-again items) as one CSR table instead of
a dict of per-user objects: ``users`` (n,) the distinct user ids, sorted; ``offsets`` (n + 1,); ``values`` (m,), user
``users[j]``'s list being ``values[offsets[j]:offsets[j + 1]]`` in the order of the source rows.

A block of B users reads its lists with two array operations (`lines`, then `flat` or `padded`), where a dict
needs a Python lookup per user; and the table is three arrays, where a dict of 10^6 users holds 10^6 objects whose
reference counts, touched by a forked block worker, copy their memory pages into the worker."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(eq=False)
class UserLists(Mapping):
    """See the module docstring. Also a read-only mapping user id -> list (an int64 array), for the user-by-user
    page builder."""

    users: pd.Index
    offsets: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, users: np.ndarray | pd.Series, values: np.ndarray | pd.Series) -> UserLists:
        """The lists of ``values`` (m,) grouped by ``users`` (m,), each in the order the rows come (a stable sort
        by user: O(m log m), no Python call per user)."""
        users, values = np.asarray(users), np.asarray(values, dtype=np.int64)
        if not users.size:
            return cls(pd.Index(users[:0]), np.zeros(1, dtype=np.int64), values[:0])
        codes, distinct = pd.factorize(users, sort=True)
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(distinct))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(pd.Index(distinct), offsets, values[order])

    @classmethod
    def empty(cls) -> UserLists:
        return cls.of(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def from_mapping(cls, lists: Mapping[Any, Any]) -> UserLists:
        """A mapping user id -> positions (any iterable, e.g. a set: its iteration order) as a table."""
        users = list(lists)
        values = [np.fromiter(lists[user], dtype=np.int64) for user in users]
        lengths = [len(v) for v in values]
        return cls.of(np.repeat(np.array(users, dtype=object if not users else None), lengths),
                      np.concatenate(values) if values else np.zeros(0, dtype=np.int64))

    def lines(self, users: np.ndarray) -> np.ndarray:
        """(B,) the line of each of ``users`` in this table, -1 for a user without a list."""
        if not len(self.users):
            return np.full(len(users), -1, dtype=np.int64)
        return self.users.get_indexer(pd.Index(users)).astype(np.int64)

    def lengths(self, lines: np.ndarray) -> np.ndarray:
        """(B,) the list length of each line (0 for -1)."""
        if not len(self.users):
            return np.zeros(len(lines), dtype=np.int64)
        safe = np.maximum(lines, 0)
        return np.where(lines >= 0, self.offsets[safe + 1] - self.offsets[safe], 0)

    def flat(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every entry of the lists of ``users`` (B,): (block rows (t,), values (t,)), block row b for ``users[b]``,
        each list in order."""
        lines = self.lines(users)
        lengths = self.lengths(lines)
        rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
        starts = np.repeat(self.offsets[np.maximum(lines, 0)] - np.cumsum(lengths) + lengths, lengths)
        return rows, self.values[starts + np.arange(rows.size, dtype=np.int64)]

    def padded(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lists of the ``users`` (B,) who have one, as rows of a (G, L) array padded with -1 (at least one
        column), and each user's row in it (B,) (-1: no list)."""
        rows, values = self.flat(users)
        has = self.lengths(self.lines(users)) > 0
        group = np.full(len(users), -1, dtype=np.int64)
        group[has] = np.arange(int(has.sum()))
        lengths = np.bincount(rows, minlength=len(users))[has]
        out = np.full((int(has.sum()), max(int(lengths.max(initial=0)), 1)), -1, dtype=np.int64)
        column = np.arange(rows.size, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[group[rows], column] = values
        return out, group

    def __getitem__(self, user: Any) -> np.ndarray:
        line = self.users.get_indexer([user])[0] if len(self.users) else -1
        if line < 0:
            raise KeyError(user)
        return self.values[self.offsets[line] : self.offsets[line + 1]]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)
