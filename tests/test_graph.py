import numpy as np
import pytest
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from homerank.engine.backend import resolve_backend
from homerank.engine.graph import build_graph, graph_statistics

CPU = resolve_backend("cpu")


def test_normalisation_by_hand():
    # users u0, u1; items i0, i1. Edges u0-i0, u0-i1, u1-i0. Degrees: u0 2, u1 1, i0 2, i1 1.
    graph, _ = build_graph(np.array([0, 0, 1]), np.array([0, 1, 0]), np.ones(3), 2, 2, "binary", CPU)
    dense = torch.zeros(4, 4)
    dense[graph.edge_index[0], graph.edge_index[1]] = graph.edge_weight
    expected = torch.zeros(4, 4)
    for u, i, value in [(0, 2, 1 / 2), (0, 3, 1 / np.sqrt(2)), (1, 2, 1 / np.sqrt(2))]:
        expected[u, i] = expected[i, u] = value
    torch.testing.assert_close(dense, expected)


def test_matches_pyg_gcn_norm_reference():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 200), rng.integers(0, 40, 200)
    weights = rng.uniform(1, 9, 200)
    pairs = np.unique(np.stack([users, items]), axis=1)
    graph, _ = build_graph(pairs[0], pairs[1], np.ones(pairs.shape[1]), 30, 40, "binary", CPU)
    src = np.concatenate([pairs[0], pairs[1] + 30])
    dst = np.concatenate([pairs[1] + 30, pairs[0]])
    ref_index, ref_weight = gcn_norm(torch.tensor(np.stack([src, dst])), None, 70, add_self_loops=False)
    ours = torch.sparse_coo_tensor(graph.edge_index, graph.edge_weight, (70, 70)).to_dense()
    ref = torch.sparse_coo_tensor(ref_index, ref_weight, (70, 70)).to_dense()
    torch.testing.assert_close(ours, ref)
    assert weights.shape == (200,)


def test_edge_weight_modes_and_stats():
    graph, matrix = build_graph(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([3.0, 1.0, 1.0]), 3, 3,
                                "log1p", CPU)
    assert matrix[0, 0] == pytest.approx(np.log(4.0))
    stats = graph_statistics(graph, CPU)
    assert stats["edges"] == 3 and stats["users"] == 3 and stats["items"] == 3
    assert stats["isolated_users"] == 1 and stats["isolated_items"] == 1
    assert stats["components"] == 3  # the connected block + one isolated user + one isolated item
    assert stats["density"] == pytest.approx(3 / 9)


def test_connected_components_from_one_direction_and_unsorted_edges():
    # nodes 0..6: {0, 4, 5} joined by 0-4 and 5-0 (given as 5 -> 0), {1, 6} by 6 -> 1, 2 and 3 alone
    rows, cols = np.array([5, 0, 6]), np.array([0, 4, 1])
    labels = CPU.connected_components(rows, cols, 7)
    assert labels[0] == labels[4] == labels[5] and labels[1] == labels[6]
    assert len({labels[0], labels[1], labels[2], labels[3]}) == 4 and sorted(set(labels)) == [0, 1, 2, 3]


def test_statistics_count_components_of_a_graph_given_in_any_order():
    graph, _ = build_graph(np.array([0, 0, 2, 3]), np.array([0, 1, 2, 2]), np.ones(4), 4, 3, "binary", CPU)
    sorted_stats = graph_statistics(graph, CPU)
    order = torch.randperm(graph.edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = type(graph)(graph.num_users, graph.num_items, graph.edge_index[:, order], graph.edge_weight[order])
    # {u0, i0, i1}, {u2, u3, i2}, u1 alone
    assert sorted_stats["components"] == graph_statistics(shuffled, CPU)["components"] == 3


def test_adjacency_from_csr_order_equals_pyg_csr_with_int32_indices(monkeypatch):
    """A graph in build_graph's CSR order becomes the CSR tensor directly (int32 indices, no sort), equal to PyG's
    to_torch_csr_tensor and computing the same A_hat X; the order check compares pairs across its chunk
    boundaries (chunks of 3 entries here), so one pair out of order, one duplicate or one id past N anywhere
    sends the graph through PyG's sorting path, which gives the same matrix."""
    from torch_geometric.utils import to_torch_csr_tensor

    import homerank.engine.graph as graph_module
    from homerank.engine.graph import BipartiteGraph, in_csr_order

    monkeypatch.setattr(graph_module, "CSR_CHECK_CHUNK", 3)
    rng = np.random.default_rng(1)
    pairs = np.unique(np.stack([rng.integers(0, 25, 150), rng.integers(0, 35, 150)]), axis=1)
    graph, _ = build_graph(pairs[0], pairs[1], rng.uniform(1, 5, pairs.shape[1]), 25, 35, "weight", CPU)
    assert in_csr_order(graph.edge_index, graph.num_nodes)
    adjacency = graph.adjacency()
    assert adjacency.layout == torch.sparse_csr and adjacency.crow_indices().dtype == torch.int32
    reference = to_torch_csr_tensor(graph.edge_index, graph.edge_weight, size=(60, 60))
    torch.testing.assert_close(adjacency.to_dense(), reference.to_dense())
    x = torch.randn(60, 4)
    torch.testing.assert_close(torch.sparse.mm(adjacency, x), torch.sparse.mm(reference, x))
    index = graph.edge_index
    swapped = index.clone()
    swapped[:, [7, 8]] = swapped[:, [8, 7]]  # two neighbours out of order, inside a chunk or across a boundary
    duplicated = torch.cat([index[:, :5], index[:, 4:]], dim=1)
    outside = index.clone()
    outside[1, -1] = 60
    for bad in (swapped, duplicated, outside[:, -1:], index.flip(1)):
        assert not in_csr_order(bad, 60)
    shuffled = torch.randperm(index.shape[1])
    other = BipartiteGraph(25, 35, index[:, shuffled], graph.edge_weight[shuffled])
    torch.testing.assert_close(other.adjacency().to_dense(), reference.to_dense())
    empty = BipartiteGraph(2, 3, torch.zeros((2, 0), dtype=torch.long), torch.zeros(0))
    assert empty.adjacency().to_dense().abs().sum() == 0


@pytest.mark.parametrize("mode", ["weight", "binary", "log1p"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adjacency_from_pairs_equals_the_graphs_adjacency(mode, seed):
    """`adjacency_from_pairs` (the CSR operator from R_hat's blocks, no edge index) equals
    ``build_graph(...)[0].adjacency()`` entry for entry — crow, columns, values and their dtypes — for pairs in any
    order with duplicates, and users and items without any edge."""
    from homerank.engine.graph import adjacency_from_pairs

    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 20, 400)
    users[users == 7], items[items == 3] = 8, 4  # user 7 and item 3 have no edge; duplicates stay
    weights = rng.uniform(0.5, 6.0, users.size)
    expected = build_graph(users, items, weights, 31, 22, mode, CPU)[0].adjacency()
    got = adjacency_from_pairs(users, items, weights, 31, 22, mode, CPU)
    assert got.layout == torch.sparse_csr and got.shape == expected.shape == (53, 53)
    for a, b in ((got.crow_indices(), expected.crow_indices()), (got.col_indices(), expected.col_indices()),
                 (got.values(), expected.values())):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
