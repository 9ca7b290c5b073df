"""The model's candidates for the for_you row, scored block by block: `CandidateLists` holds the lists of some model
users; `ModelCandidates` makes them for any set of model rows, either from a scoring function (the homepage stage:
scores (n, I) = scorer(users), then the top k, for the block's users only, so no (U, k) table of every user is
ever held) or from precomputed (U, k) arrays (frames in, e.g. the tests).

Most users' for_you row is full long before the end of their list, so a block first takes only the top
``FIRST_CANDIDATES`` (a top-k over I scores costs about twice as much for k = 500 as for k = 100); the rows that
walked past the end of that short list (they pooled a fallback item, or too few) are filled again from the whole
top-k list (`homerank.homepage.block_pages`), which gives the rows of the whole list for every user."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# (model rows (n,), k) -> their top-k model items (n, min(k, I)) best first and the scores (n, min(k, I))
CandidateFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
FIRST_CANDIDATES = 100  # a block's first, short lists (see the module docstring)


@dataclass
class CandidateLists:
    """The candidates of some model users: ``positions`` (n, k) catalogue positions best first (-1: a model item
    outside the catalogue), ``scores`` (n, k); ``rows`` (n,) the sorted model rows they belong to, or None when line i
    is model row i (every user's lists); ``truncated``: the lists are the first part of longer ones
    (`ModelCandidates.for_rows` gives the whole lists)."""

    positions: np.ndarray
    scores: np.ndarray
    rows: np.ndarray | None = None
    truncated: bool = False

    def lines(self, model_rows: np.ndarray) -> np.ndarray:
        """The line of each of ``model_rows`` (n,) in ``positions``, -1 where there is none (a cold user: row -1,
        or a user whose lists these are not)."""
        model_rows = np.asarray(model_rows, dtype=np.int64)
        if self.rows is None:
            return np.where((model_rows >= 0) & (model_rows < self.positions.shape[0]), model_rows, -1)
        if not self.rows.size:
            return np.full(model_rows.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.rows, model_rows), self.rows.size - 1)
        return np.where((model_rows >= 0) & (self.rows[at] == model_rows), at, -1)


class ModelCandidates:
    """The top ``k`` for_you candidates of any model rows: ``lists_of(rows, k)`` gives (items (n, k) model item
    index, scores (n, k)); ``positions_of_model_items`` (I,) maps model items to catalogue positions."""

    def __init__(self, lists_of: CandidateFn, positions_of_model_items: np.ndarray, k: int) -> None:
        self.lists_of = lists_of
        self.positions_of_model_items = positions_of_model_items
        self.k = k

    @classmethod
    def from_arrays(cls, items: np.ndarray, scores: np.ndarray, positions_of_model_items: np.ndarray
                    ) -> ModelCandidates:
        """Candidates precomputed for every model user: items/scores (U, k), row u for model row u."""
        items, scores = np.asarray(items), np.asarray(scores)
        return cls(lambda rows, k: (items[rows, :k], scores[rows, :k]), positions_of_model_items, items.shape[1])

    def for_rows(self, model_rows: np.ndarray, whole: bool = False) -> CandidateLists:
        """The lists of the distinct non-negative ``model_rows`` (any order, -1 allowed): the first
        ``FIRST_CANDIDATES`` of each (``truncated`` when that is less than ``k`` and than the items), or the whole
        top ``k`` when ``whole``."""
        rows = np.unique(np.asarray(model_rows, dtype=np.int64))
        rows = rows[rows >= 0]
        if not rows.size:  # a block of cold users only
            return CandidateLists(np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0)), rows)
        k = self.k if whole else min(self.k, FIRST_CANDIDATES)
        items, scores = self.lists_of(rows, k)
        items = np.asarray(items, dtype=np.int64)
        truncated = k < self.k and items.shape[1] == k  # fewer columns: the lists hold every item already
        return CandidateLists(self.positions_of_model_items[items], np.asarray(scores), rows, truncated)
