import numpy as np
import pytest
import torch
from torch_geometric.nn.models import LightGCN

from homerank.engine.backend import resolve_backend
from homerank.engine.graph import build_graph
from homerank.gnn.losses import bpr_loss, sampled_softmax_loss
from homerank.gnn.model import LightGCNRecommender


def test_sparse_csr_path_equals_pyg_message_passing():
    rng = np.random.default_rng(1)
    pairs = np.unique(np.stack([rng.integers(0, 12, 60), rng.integers(0, 9, 60)]), axis=1)
    graph, _ = build_graph(pairs[0], pairs[1], np.ones(pairs.shape[1]), 12, 9, "binary", resolve_backend("cpu"))
    torch.manual_seed(0)
    ours = LightGCNRecommender(12, 9, 8, 3)
    users, items = ours(graph.adjacency())
    # reference: PyG's own LightGCN with its built-in gcn_norm over the raw (unnormalised) edge_index
    reference = LightGCN(21, 8, 3)
    reference.embedding.weight.data.copy_(ours.layer0.data)
    raw = torch.tensor(np.concatenate([np.stack([pairs[0], pairs[1] + 12]), np.stack([pairs[1] + 12, pairs[0]])],
                                      axis=1))
    expected = reference.get_embedding(raw)
    torch.testing.assert_close(torch.cat([users, items]), expected, atol=1e-5, rtol=1e-5)


def test_bpr_loss_by_hand():
    user = torch.tensor([[1.0, 0.0]])
    pos, neg = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    assert bpr_loss(user, pos, neg).item() == pytest.approx(float(np.log1p(np.exp(-2.0))))


def test_softmax_loss_prefers_aligned_positive():
    user = torch.tensor([[1.0, 0.0]])
    aligned = sampled_softmax_loss(user, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 0.5)
    misaligned = sampled_softmax_loss(user, torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), 0.5)
    assert aligned < misaligned
    # by hand: logits [1/0.5, 0] -> loss = log(e^2 + 1) - 2
    assert aligned.item() == pytest.approx(float(np.log(np.exp(2.0) + 1) - 2.0))


def test_symmetric_backward_matches_autograd_through_pyg():
    rng = np.random.default_rng(2)
    pairs = np.unique(np.stack([rng.integers(0, 10, 50), rng.integers(0, 7, 50)]), axis=1)
    graph, _ = build_graph(pairs[0], pairs[1], np.ones(pairs.shape[1]), 10, 7, "binary", resolve_backend("cpu"))
    torch.manual_seed(0)
    ours = LightGCNRecommender(10, 7, 4, 2)
    reference = LightGCN(17, 4, 2, normalize=False)
    reference.embedding.weight.data.copy_(ours.layer0.data)
    users, items = ours(graph.adjacency())
    (torch.cat([users, items]).pow(2).sum()).backward()
    expected = reference.get_embedding(graph.edge_index, graph.edge_weight)
    expected.pow(2).sum().backward()
    torch.testing.assert_close(ours.layer0.grad, reference.embedding.weight.grad, atol=1e-5, rtol=1e-5)


def test_softmax_per_user_negatives_equal_per_pair_form():
    torch.manual_seed(0)
    users, positives, negatives = torch.randn(3, 4), torch.randn(7, 4), torch.randn(5, 4)
    user_of_pair = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    grouped = sampled_softmax_loss(users, positives, negatives, 0.3, user_of_pair)
    per_pair = sampled_softmax_loss(users[user_of_pair], positives, negatives, 0.3)
    torch.testing.assert_close(grouped, per_pair)


@pytest.mark.parametrize("pieces", [1, 3, 4, 8])
def test_gradient_summed_in_place_by_column_blocks_equals_the_whole_width_sum(monkeypatch, pieces):
    """The training step's backward pass (``gradient_in_place``) sums E's gradient over its own buffer in column
    blocks: the layer-0 gradient equals the whole-width power sum bit for bit, and by default a caller's own gradient
    tensor is left as it was."""
    from homerank.gnn import model as model_module

    monkeypatch.setattr(model_module, "BACKWARD_COLUMN_PIECES", pieces)
    rng = np.random.default_rng(3)
    pairs = np.unique(np.stack([rng.integers(0, 40, 300), rng.integers(0, 30, 300)]), axis=1)
    graph, _ = build_graph(pairs[0], pairs[1], np.ones(pairs.shape[1]), 40, 30, "binary", resolve_backend("cpu"))
    adjacency = graph.adjacency()
    torch.manual_seed(0)
    recommender = LightGCNRecommender(40, 30, 16, 3)
    rows = torch.tensor(rng.integers(0, 70, 50))
    weights = torch.randn(50, 16)
    grads = []
    for in_place in (False, True):
        recommender.zero_grad(set_to_none=True)
        final = recommender.propagate(adjacency, gradient_in_place=in_place)
        (final[rows] * weights).sum().backward()  # the gradient reaches the node as a fresh scatter of its rows
        grads.append(recommender.layer0.grad.clone())
    assert torch.equal(grads[0], grads[1])
    mine = torch.randn(70, 16)
    kept = mine.clone()
    recommender.zero_grad(set_to_none=True)
    recommender.propagate(adjacency).backward(mine)
    assert torch.equal(mine, kept)


@pytest.mark.parametrize("shuffled", [False, True])
def test_training_pairs_decoded_from_the_keys_equal_the_pairs(shuffled):
    """Pairs in key order (the ETL's) are dropped from the data while the steps run and decoded from the sampler's
    keys, batch by batch, then given back equal (values and dtype); pairs in another order are kept as they are."""
    from homerank.gnn.keys import pair_keys
    from homerank.gnn.train import TrainData, TrainingPairs

    rng = np.random.default_rng(5)
    keys = np.unique(rng.integers(0, 7 * 9, 40))
    users, items = (keys // 9).astype(np.int32), (keys % 9).astype(np.int32)
    if shuffled:
        order = rng.permutation(keys.size)
        users, items = users[order], items[order]
    data = TrainData(7, 9, torch.from_numpy(users.copy()), torch.from_numpy(items.copy()), torch.zeros(0))
    pairs = TrainingPairs(data, pair_keys(data.train_users, data.train_items, 9), "cpu")
    assert pairs.decoded is not shuffled
    batch = torch.tensor(rng.permutation(keys.size)[:15], dtype=torch.int32)
    with pairs:
        assert (data.train_users is None) is not shuffled
        got_users, got_items = pairs.of(batch)
        assert got_users.dtype == torch.int32 and got_items.dtype == torch.int32
        assert got_users.tolist() == users[batch.numpy()].tolist()
        assert got_items.tolist() == items[batch.numpy()].tolist()
        assert pairs.all_users().tolist() == users.tolist()
    assert data.train_users.dtype == torch.int32
    assert data.train_users.tolist() == users.tolist() and data.train_items.tolist() == items.tolist()
