"""GPU-only checks: the CUDA path agrees with the CPU path. Skipped cleanly without CUDA."""

import numpy as np
import pytest
import torch

from homerank.engine.backend import resolve_backend
from homerank.engine.graph import build_graph
from homerank.gnn.metrics import CSRIndex, evaluate_ranking
from homerank.gnn.model import LightGCNRecommender
from homerank.gnn.scorer import embedding_scorer

pytestmark = pytest.mark.gpu


def _tiny_graph():
    rng = np.random.default_rng(0)
    pairs = np.unique(np.stack([rng.integers(0, 50, 400), rng.integers(0, 80, 400)]), axis=1)
    return pairs, build_graph(pairs[0], pairs[1], np.ones(pairs.shape[1]), 50, 80, "binary",
                              resolve_backend("cpu"))[0]


def test_gpu_backend_resolves_to_cuda():
    assert resolve_backend("gpu").torch_device.type == "cuda"


def test_propagation_and_metrics_agree_between_cpu_and_cuda():
    pairs, graph = _tiny_graph()
    torch.manual_seed(0)
    model = LightGCNRecommender(50, 80, 16, 3)
    users_cpu, items_cpu = model.embeddings(graph.adjacency("cpu"))
    model_gpu = model.to("cuda")
    users_gpu, items_gpu = model_gpu.embeddings(graph.adjacency("cuda"))
    torch.testing.assert_close(users_gpu.cpu(), users_cpu, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(items_gpu.cpu(), items_cpu, atol=1e-5, rtol=1e-4)
    train = CSRIndex.from_pairs(pairs[0][::2], pairs[1][::2], 50, 80)
    test = CSRIndex.from_pairs(pairs[0][1::2], pairs[1][1::2], 50, 80)
    cpu = evaluate_ranking(embedding_scorer(users_cpu, items_cpu), test, train, [10, 20], 16, "cpu")
    gpu = evaluate_ranking(embedding_scorer(users_gpu, items_gpu), test, train, [10, 20], 16, "cuda")
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], abs=1e-6)


def test_randomized_svd_agrees_between_cpu_and_cuda():
    import scipy.sparse

    from homerank.gnn.svd import truncated_svd

    matrix = scipy.sparse.random(120, 90, density=0.1, random_state=np.random.default_rng(0), format="csr")
    _, values_cpu, right_cpu = truncated_svd(matrix, 8, "randomized", iterations=8, device="cpu")
    _, values_gpu, right_gpu = truncated_svd(matrix, 8, "randomized", iterations=8, device="cuda")
    np.testing.assert_allclose(values_gpu, values_cpu, rtol=1e-4)
    np.testing.assert_allclose(right_gpu @ right_gpu.T, right_cpu @ right_cpu.T, atol=1e-3)  # same subspace
