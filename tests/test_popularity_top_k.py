"""The popularity baseline's top-k without scoring every item for every user (gnn.metrics.popularity_top_k)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from homerank.gnn.metrics import CSRIndex, evaluate_popularity, evaluate_ranking, popularity_top_k, top_k
from homerank.gnn.scorer import popularity_scorer


def test_same_list_minus_own_items_by_hand() -> None:
    popularity = torch.tensor([5.0, 9.0, 1.0, 7.0])  # order 1, 3, 0, 2
    known = CSRIndex.from_pairs(np.array([1, 1]), np.array([1, 0]), 3, 4)
    ranked, scores = popularity_top_k(popularity, torch.tensor([0, 1, 2]), 3, known)
    assert ranked.tolist() == [[1, 3, 0], [3, 2, 1], [1, 3, 0]]
    # user 1 has 2 allowed items: the excluded ones come last with -inf, in popularity order (1 before 0)
    assert scores[0].tolist() == [9.0, 7.0, 5.0]
    assert scores[1, :2].tolist() == [7.0, 1.0] and scores[1, 2] == -torch.inf


def test_ties_go_to_the_lower_item_index() -> None:
    popularity = torch.tensor([2.0, 3.0, 2.0, 3.0, 2.0])
    ranked, _ = popularity_top_k(popularity, torch.tensor([0]), 4, None)
    assert ranked.tolist() == [[1, 3, 0, 2]]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 15), st.integers(1, 20), st.integers(1, 6), st.data())
def test_matches_scoring_every_item(num_users: int, num_items: int, k: int, batch: int, data: st.DataObject) -> None:
    """Against `top_k` of the dense popularity scorer (distinct popularities, so the order is unique)."""
    popularity = torch.tensor(data.draw(st.permutations(range(num_items))), dtype=torch.float32)
    cells = data.draw(st.sets(st.tuples(st.integers(0, num_users - 1), st.integers(0, num_items - 1))))
    pairs = np.array(sorted(cells), dtype=np.int64).reshape(-1, 2)
    known = CSRIndex.from_pairs(pairs[:, 0], pairs[:, 1], num_users, num_items)
    users = torch.tensor(data.draw(st.permutations(range(num_users))))
    fast_items, fast_scores = popularity_top_k(popularity, users, k, known, batch_size=batch)
    dense_items, dense_scores = top_k(popularity_scorer(popularity), users, k, known, batch_size=batch)
    assert torch.equal(fast_scores, dense_scores)
    finite = torch.isfinite(dense_scores)
    assert torch.equal(fast_items[finite], dense_items[finite])
    for row, user in enumerate(users.tolist()):  # the -inf tail holds the user's own excluded items
        own = set(known.indices[known.indptr[user] : known.indptr[user + 1]].tolist())
        assert set(fast_items[row][~finite[row]].tolist()) <= own


def test_heavy_user_blocks_are_cut_and_metrics_match_the_dense_scorer(monkeypatch) -> None:
    import homerank.gnn.metrics as metrics

    monkeypatch.setattr(metrics, "MAX_BLOCK_CELLS", 16)  # every block is cut into blocks of a few users
    rng = np.random.default_rng(1)
    num_users, num_items = 40, 30
    popularity = torch.from_numpy(rng.permutation(num_items).astype(np.float32))
    known_pairs = np.unique(np.stack([rng.integers(0, num_users, 300), rng.integers(0, num_items, 300)], 1), axis=0)
    known = CSRIndex.from_pairs(known_pairs[:, 0], known_pairs[:, 1], num_users, num_items)
    truth_pairs = np.stack([rng.integers(0, num_users, 80), rng.integers(0, num_items, 80)], 1)
    truth_pairs = np.unique(truth_pairs, axis=0)
    truth = CSRIndex.from_pairs(truth_pairs[:, 0], truth_pairs[:, 1], num_users, num_items)
    dense = evaluate_ranking(popularity_scorer(popularity), truth, known, [5, 10], batch_size=7)
    assert evaluate_popularity(popularity, truth, known, [5, 10], batch_size=7) == dense
