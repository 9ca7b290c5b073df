"""The model's candidates for the for_you row, scored block by block: `CandidateLists` holds the lists of some model
users; `ModelCandidates` makes them for any set of model rows, either from a scoring function (the homepage stage:
scores (n, I) = scorer(users), then the top k, for the block's users only, so no (U, k) table of every user is
ever held) or from precomputed (U, k) arrays (frames in, e.g. the tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# model rows (n,) -> their top-k model items (n, k) best first and the scores (n, k)
CandidateFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class CandidateLists:
    """The candidates of some model users: ``positions`` (n, k) catalogue positions best first (-1: a model item
    outside the catalogue), ``scores`` (n, k); ``rows`` (n,) the sorted model rows they belong to, or None when line i
    is model row i (every user's lists)."""

    positions: np.ndarray
    scores: np.ndarray
    rows: np.ndarray | None = None

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
    """The for_you candidates of any model rows: ``lists_of`` gives (items (n, k) model item index, scores (n, k));
    ``positions_of_model_items`` (I,) maps model items to catalogue positions."""

    def __init__(self, lists_of: CandidateFn, positions_of_model_items: np.ndarray) -> None:
        self.lists_of = lists_of
        self.positions_of_model_items = positions_of_model_items

    @classmethod
    def from_arrays(cls, items: np.ndarray, scores: np.ndarray, positions_of_model_items: np.ndarray
                    ) -> ModelCandidates:
        """Candidates precomputed for every model user: items/scores (U, k), row u for model row u."""
        items, scores = np.asarray(items), np.asarray(scores)
        return cls(lambda rows: (items[rows], scores[rows]), positions_of_model_items)

    def for_rows(self, model_rows: np.ndarray) -> CandidateLists:
        """The lists of the distinct non-negative ``model_rows`` (any order, -1 allowed)."""
        rows = np.unique(np.asarray(model_rows, dtype=np.int64))
        rows = rows[rows >= 0]
        if not rows.size:  # a block of cold users only
            return CandidateLists(np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0)), rows)
        items, scores = self.lists_of(rows)
        items = np.asarray(items, dtype=np.int64)
        return CandidateLists(self.positions_of_model_items[items], np.asarray(scores), rows)
