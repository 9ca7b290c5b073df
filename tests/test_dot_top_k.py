"""Exact top-k of dot-product scores through faiss (`homerank.gnn.dot_top_k`): the same items and scores as the
materialised (B, I) block with torch.topk, exclusions and the plain-way fallbacks included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from homerank.gnn.dot_top_k import DotTopK
from homerank.gnn.metrics import CSRIndex, top_k
from homerank.gnn.scorer import embedding_scorer


def _case(seed: int, users: int, items: int, pairs: int, heavy: int):
    generator = torch.Generator().manual_seed(seed)
    user_vectors, item_vectors = torch.randn(users, 8, generator=generator), torch.randn(items, 8, generator=generator)
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, users, pairs), rng.integers(0, items, pairs)
    u, i = np.r_[u, np.zeros(heavy, dtype=np.int64)], np.r_[i, np.arange(heavy)]  # user 0 excludes `heavy` items
    return user_vectors, item_vectors, CSRIndex.from_pairs(u, i, users, items)


@given(st.integers(0, 10_000), st.integers(1, 60), st.integers(1, 80), st.integers(0, 400), st.integers(0, 80),
       st.integers(1, 30), st.integers(1, 40), st.booleans(), st.integers(1, 400))
@settings(max_examples=60, deadline=None)
def test_equals_the_materialised_top_k(seed, users, items, pairs, heavy, k, max_fetch, excluding, cells):
    # ``cells`` (users x fetched items per search) from 1 to beyond every batch: cut batches find the same items
    heavy = min(heavy, items)
    user_vectors, item_vectors, exclude = _case(seed, users, items, pairs, heavy)
    exclude = exclude if excluding else None
    wanted = torch.randperm(users, generator=torch.Generator().manual_seed(seed))[: max(1, users // 2)]
    got_items, got_scores = DotTopK(item_vectors, max_fetch=max_fetch, search_cells=cells)(user_vectors, wanted, k,
                                                                                             exclude, 7)
    items_, scores = top_k(embedding_scorer(user_vectors, item_vectors), wanted, k, exclude, 7)
    torch.testing.assert_close(got_scores, scores, rtol=1e-5, atol=1e-5)
    finite = torch.isfinite(scores)  # random normal scores have no ties: the same items where a score is finite
    assert torch.equal(got_items[finite], items_[finite])


def test_by_hand():
    item_vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    user_vectors = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    exclude = CSRIndex.from_pairs(np.array([0]), np.array([2]), 2, 4)  # user 0 never gets item 2
    items, scores = DotTopK(item_vectors)(user_vectors, torch.tensor([0, 1]), 2, exclude)
    assert items.tolist() == [[0, 1], [2, 1]]  # user 0: scores 2, 1, (3: excluded), -2; user 1: 1, 3, 4, -1
    assert scores.tolist() == [[2.0, 1.0], [4.0, 3.0]]
    empty_items, empty_scores = DotTopK(item_vectors)(user_vectors, torch.empty(0, dtype=torch.long), 3)
    assert empty_items.shape == (0, 3) and empty_scores.shape == (0, 3)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_more_wanted_than_allowed_fills_the_tail_with_minus_infinity(k):
    item_vectors = torch.eye(4)
    exclude = CSRIndex.from_pairs(np.array([0, 0, 0]), np.array([0, 1, 2]), 1, 4)
    items, scores = DotTopK(item_vectors)(torch.ones(1, 4), torch.tensor([0]), k, exclude)
    assert items.shape == (1, min(k, 4)) and items[0, 0] == 3 and bool(torch.isinf(scores[0, 1:]).all())
