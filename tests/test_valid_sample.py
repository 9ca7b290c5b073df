"""Early stopping on a seeded sample of validation users (train.valid_users)."""

from __future__ import annotations

import numpy as np
import torch

from homerank.gnn.metrics import CSRIndex


def _lists() -> CSRIndex:
    # users 0..9; users 3 and 7 have no validation items
    users = np.array([0, 0, 1, 2, 4, 5, 5, 6, 8, 9])
    items = np.array([1, 2, 0, 3, 1, 2, 4, 0, 3, 2])
    return CSRIndex.from_pairs(users, items, 10, 5)


def test_sample_keeps_whole_lists_of_n_users_with_items_and_is_seeded() -> None:
    lists = _lists()
    sample = lists.sample_users(3, seed=7)
    kept = torch.nonzero(sample.counts() > 0).flatten()
    assert kept.numel() == 3
    assert not set(kept.tolist()) & {3, 7}  # only users that have validation items are drawn
    for user in kept.tolist():  # each drawn user keeps every one of their items
        lo, hi = lists.indptr[user], lists.indptr[user + 1]
        slo, shi = sample.indptr[user], sample.indptr[user + 1]
        assert sample.indices[slo:shi].tolist() == lists.indices[lo:hi].tolist()
    again = lists.sample_users(3, seed=7)
    assert torch.equal(again.indptr, sample.indptr) and torch.equal(again.indices, sample.indices)
    assert sample.indptr.numel() == lists.indptr.numel()  # still indexed by every user


def test_no_sample_when_there_are_not_more_users_than_asked() -> None:
    lists = _lists()
    assert lists.sample_users(None, seed=0) is lists
    assert lists.sample_users(8, seed=0) is lists  # exactly 8 users have items
    assert lists.sample_users(7, seed=0) is not lists


def test_training_stops_early_on_the_sampled_users() -> None:
    from homerank.gnn.config import EvalConfig, TrainConfig
    from homerank.gnn.metrics import evaluate_ranking
    from homerank.gnn.scorer import embedding_scorer
    from homerank.gnn.train import train_lightgcn
    from tests.test_distributed_training import _tiny_data

    data = _tiny_data()
    config = TrainConfig(epochs=2, embedding_dim=8, num_layers=1, valid_users=40)
    result = train_lightgcn(data, config, EvalConfig(ks=[20]), seed=3, device=torch.device("cpu"),
                            show_progress=False)
    assert [h["valid_users"] for h in result.history] == [40, 40]
    # the metric is that of the sample: the same figure as scoring the seeded sample directly
    user_emb, item_emb = result.model.embeddings(data.adjacency)
    train_index = CSRIndex.from_pairs(data.train_users.numpy(), data.train_items.numpy(), data.num_users,
                                      data.num_items)
    expected = evaluate_ranking(embedding_scorer(user_emb, item_emb), data.valid.sample_users(40, 3), train_index,
                                [20])
    best = result.history[result.best_epoch - 1]["valid"]["ndcg@20"]
    assert best == expected["ndcg@20"]
    everyone = evaluate_ranking(embedding_scorer(user_emb, item_emb), data.valid, train_index, [20])
    assert everyone["ndcg@20"] != expected["ndcg@20"]  # a different set of users: the sample was used
