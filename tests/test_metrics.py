import math

import numpy as np
import pytest
import torch

from homerank.gnn.metrics import (
    CSRIndex,
    evaluate_ranking,
    hits_matrix,
    metrics_from_hits,
    ranking_hits,
    sample_standard_errors,
    top_k,
)
from homerank.gnn.scorer import popularity_scorer


def test_metrics_by_hand():
    # one user, ranked list [a, b, c, d], relevant {b, d, e}: hits at ranks 2 and 4
    hits = torch.tensor([[False, True, False, True]])
    out = metrics_from_hits(hits, torch.tensor([3]), [2, 4])
    assert out["recall@2"] == pytest.approx(1 / 3)
    assert out["precision@2"] == pytest.approx(1 / 2)
    assert out["hitrate@2"] == 1.0
    assert out["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    dcg4 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg4 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert out["ndcg@4"] == pytest.approx(dcg4 / idcg4)
    assert out["recall@4"] == pytest.approx(2 / 3)


def test_standard_errors_of_a_sample_by_hand():
    # four sampled users (one more without held-out items, not counted), hitrate@1 values 1, 0, 0, 1 (mean 1/2,
    # s^2 = 1/3), from a population of N = 10: se = sqrt(1/3) / sqrt(4) * sqrt((10 - 4) / (10 - 1))
    hits = torch.tensor([[True, False], [False, True], [False, False], [True, True], [True, False]])
    n_truth = torch.tensor([1, 2, 1, 2, 0])
    errors = sample_standard_errors(hits, n_truth, [1, 2], population=10)
    assert errors["hitrate@1"] == pytest.approx(math.sqrt(1 / 3) / 2 * math.sqrt(6 / 9))
    # recall@2 per user: 1, 1/2, 0, 1 -> mean 5/8, s^2 = ((3/8)^2 + (1/8)^2 + (5/8)^2 + (3/8)^2) / 3
    s2 = ((3 / 8) ** 2 + (1 / 8) ** 2 + (5 / 8) ** 2 + (3 / 8) ** 2) / 3
    assert errors["recall@2"] == pytest.approx(math.sqrt(s2) / 2 * math.sqrt(6 / 9))
    # the whole population (no sampling error) and a single user (no spread to estimate): zero
    assert set(sample_standard_errors(hits, n_truth, [1, 2], population=4).values()) == {0.0}
    assert set(sample_standard_errors(hits[:1], n_truth[:1], [1], population=10).values()) == {0.0}


def test_ranking_hits_are_what_the_metrics_average():
    gen = torch.Generator().manual_seed(3)
    users, items = torch.randn(30, 4, generator=gen), torch.randn(12, 4, generator=gen)
    truth = CSRIndex.from_pairs(np.arange(30) % 25, (np.arange(30) * 7) % 12, 30, 12)
    train = CSRIndex.from_pairs(np.arange(30), (np.arange(30) * 5 + 1) % 12, 30, 12)
    score = lambda batch: users[batch] @ items.T  # noqa: E731
    hits, n_truth = ranking_hits(score, truth, train, [3, 5], batch_size=7)
    assert hits.shape == (25, 5) and n_truth.tolist() == truth.counts()[truth.counts() > 0].tolist()
    assert metrics_from_hits(hits, n_truth, [3, 5]) == evaluate_ranking(score, truth, train, [3, 5], batch_size=7)


def test_users_without_truth_are_not_averaged():
    hits = torch.tensor([[True, False], [False, False]])
    out = metrics_from_hits(hits, torch.tensor([1, 0]), [2])
    assert out["recall@2"] == 1.0 and out["ndcg@2"] == 1.0


def test_full_ranking_masks_training_items():
    # 2 users, 4 items. Scores: user 0 prefers items 0 > 1 > 2 > 3; item 0 is a training item of user 0.
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    train = CSRIndex.from_pairs(np.array([0]), np.array([0]), 2, 4)
    truth = CSRIndex.from_pairs(np.array([0, 1]), np.array([1, 0]), 2, 4)
    ranked, _ = top_k(lambda batch: scores[batch], torch.tensor([0, 1]), 2, train, batch_size=1)
    assert ranked.tolist() == [[1, 2], [3, 2]]
    hits = hits_matrix(torch.tensor([0, 1]), ranked, truth)
    assert hits.tolist() == [[True, False], [False, False]]
    out = evaluate_ranking(lambda batch: scores[batch], truth, train, [1, 2], batch_size=1)
    assert out["recall@1"] == pytest.approx(0.5)  # user 0 hits at rank 1 (item 0 masked), user 1 misses


def test_popularity_baseline_same_list_minus_own_items():
    popularity = torch.tensor([5.0, 9.0, 1.0, 7.0])
    train = CSRIndex.from_pairs(np.array([1]), np.array([1]), 2, 4)
    ranked, scores = top_k(popularity_scorer(popularity), torch.tensor([0, 1]), 3, train)
    assert ranked.tolist() == [[1, 3, 0], [3, 0, 2]]
    assert scores[1].tolist() == [7.0, 5.0, 1.0]


def test_csr_pairs_expand_rows():
    index = CSRIndex.from_pairs(np.array([0, 0, 2]), np.array([3, 1, 2]), 3, 4)
    rows, cols = index.pairs(torch.tensor([2, 0]))
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 2), (1, 1), (1, 3)]


def test_page_quality_by_hand():
    import pandas as pd

    from homerank.homepage.quality import gini, intra_list_diversity

    assert gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # (n - 1) / n for one item taking all
    pages = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": ["a", "b", "c", "a", "b"]})
    category = pd.Series({"a": "x", "b": "x", "c": "y"})
    # user 1: pairs (a,b) same, (a,c), (b,c) different -> 2/3; user 2: (a,b) same -> 0
    assert intra_list_diversity(pages, category) == pytest.approx((2 / 3 + 0) / 2)


def test_page_diversity_by_hand_with_unknown_categories_and_short_pages():
    import pandas as pd

    from homerank.homepage.quality import diversity_per_user, page_diversity

    # "b" (text ids, out of order): x, x, y, none -> n = 4, same pairs 2 of 12 -> 1 - 2/12; "a": one slot -> no
    # value; "c": only items without a category -> no value; "d": x, none -> n = 2, no same pair -> 1
    users = np.array(["b", "a", "b", "c", "b", "b", "c", "d", "d"], dtype=object)
    codes = np.array([0, 1, 0, -1, 1, -1, -1, 0, -1])
    found = page_diversity(users, codes)
    assert found.index.tolist() == ["b", "d"]
    assert found.tolist() == pytest.approx([1 - 2 / 12, 1.0])
    assert page_diversity(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).empty
    pages = pd.DataFrame({"user_id": users, "item_id": ["i0", "i1", "i0", "?", "i1", "?", "?", "i0", "?"]})
    by_frame = diversity_per_user(pages, pd.Series({"i0": "x", "i1": "y"}))
    assert by_frame.index.tolist() == ["b", "d"] and by_frame.tolist() == pytest.approx([1 - 2 / 12, 1.0])


def test_restrict_keeps_only_the_chosen_users():
    from homerank.gnn.metrics import CSRIndex

    index = CSRIndex.from_pairs(np.array([0, 0, 1, 2, 2, 2]), np.array([1, 3, 0, 0, 1, 2]), 4, 5)
    kept = index.restrict(torch.tensor([0, 2]))
    assert kept.counts().tolist() == [2, 0, 3, 0]
    assert kept.indices.tolist() == [1, 3, 0, 1, 2]


@pytest.mark.parametrize("with_ranker", [False, True])
def test_ranking_in_chunks_of_users_gives_the_same_metrics(with_ranker):
    from homerank.gnn.dot_top_k import embedding_ranker
    from homerank.gnn.scorer import embedding_scorer

    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(23, 5, generator=generator), torch.randn(17, 5, generator=generator)
    rng = np.random.default_rng(1)
    train = CSRIndex.from_pairs(rng.integers(0, 23, 60), rng.integers(0, 17, 60), 23, 17)
    truth = CSRIndex.from_pairs(rng.integers(0, 20, 30), rng.integers(0, 17, 30), 23, 17)  # users 20-22: none
    ranker = embedding_ranker(users, items) if with_ranker else None
    whole = evaluate_ranking(embedding_scorer(users, items), truth, train, [1, 3, 5], 4, ranker=ranker)
    for chunk in (1, 2, 7):
        assert evaluate_ranking(embedding_scorer(users, items), truth, train, [1, 3, 5], 4, ranker=ranker,
                                chunk_users=chunk) == whole
    empty = CSRIndex.from_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), 23, 17)
    assert evaluate_ranking(embedding_scorer(users, items), empty, train, [1], 4, ranker=ranker,
                            chunk_users=2)["recall@1"] == 0.0


def test_popularity_evaluated_in_chunks_of_users_gives_the_same_metrics():
    from homerank.gnn.metrics import evaluate_popularity

    rng = np.random.default_rng(2)
    popularity = torch.from_numpy(rng.permutation(17).astype(np.float32))  # no ties: torch.topk orders them its way
    train = CSRIndex.from_pairs(rng.integers(0, 23, 60), rng.integers(0, 17, 60), 23, 17)
    truth = CSRIndex.from_pairs(rng.integers(0, 20, 30), rng.integers(0, 17, 30), 23, 17)
    whole = evaluate_popularity(popularity, truth, train, [1, 3, 5], 4)
    assert whole == evaluate_ranking(popularity_scorer(popularity), truth, train, [1, 3, 5], 4)
    for chunk in (1, 3, 8):
        assert evaluate_popularity(popularity, truth, train, [1, 3, 5], 4, chunk_users=chunk) == whole


def test_csr_index_from_keys_equals_the_one_from_pairs():
    """The training loop builds the evaluation's mask from the sampler's sorted keys u * I + i: the same lists as
    from the pairs (duplicates once, users without pairs empty, the last user and item included), int32 items."""
    from homerank.gnn.keys import pair_keys

    rng = np.random.default_rng(3)
    users, items = rng.integers(0, 9, 60), rng.integers(0, 7, 60)
    users[:2], items[:2] = 8, 6  # the last user's last item
    users[users == 4] = 5  # user 4 has no pairs
    expected = CSRIndex.from_pairs(users, items, 10, 7)  # user 9 has none either
    built = CSRIndex.from_keys(pair_keys(torch.from_numpy(users), torch.from_numpy(items), 7), 10, 7)
    assert torch.equal(built.indptr, expected.indptr)
    assert torch.equal(built.indices, expected.indices) and built.indices.dtype == torch.int32
    assert built.counts()[4] == 0 and built.counts()[9] == 0
