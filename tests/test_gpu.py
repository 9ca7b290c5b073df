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


def test_whole_pipeline_with_the_model_on_cuda_matches_the_cpu_run(homepage_run, tmp_path):
    """``homerank run --device gpu`` on the tiny log (frames on pandas where RAPIDS is absent, the model on CUDA):
    the same ETL edges as the shared CPU run, every stage's outputs, metrics within a training noise of the CPU
    run's (CUDA's scatter sums are not bit-identical), a homepage for every ranked user (the GPU-held candidate
    lists, `jobs/stage_homepage.py`), and `Run.recommend` answering from the CUDA-trained embeddings."""
    import json

    import pandas as pd

    from homerank import Run
    from homerank.jobs.cli import main
    from tests.conftest import homepage_config

    cpu_run, log = homepage_run
    config = homepage_config(tmp_path / "c.yaml", log)
    config.write_text(config.read_text().replace("device: cpu", "device: gpu"))
    run = tmp_path / "run"
    assert main(["run", "--input", str(log / "events"), "--out", str(run), "--config", str(config), "--quiet"]) == 0
    edges = pd.read_parquet(run / "etl" / "edges").sort_values(["user_index", "item_index"], ignore_index=True)
    edges_cpu = pd.read_parquet(cpu_run / "etl" / "edges").sort_values(["user_index", "item_index"],
                                                                        ignore_index=True)
    pd.testing.assert_frame_equal(edges, edges_cpu)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics_cpu = json.loads((cpu_run / "metrics.json").read_text())
    assert metrics_cpu["test"]
    for key, value in metrics_cpu["test"].items():
        assert metrics["test"][key] == pytest.approx(value, abs=0.05), key
    logs = "\n".join(path.read_text() for path in (run / "logs").glob("*.log"))
    assert "cuda" in logs.lower()
    homepage_users = pd.read_parquet(run / "homepage", columns=["user_id"])["user_id"].nunique()
    ranked_users = pd.read_parquet(run / "rankings", columns=["user_id"])["user_id"].nunique()
    assert homepage_users == ranked_users > 0
    some_users = pd.read_parquet(run / "rankings", columns=["user_id"])["user_id"].drop_duplicates().head(5)
    answer = Run(run).recommend(list(some_users), k=5)
    assert answer.groupby("user_id").size().eq(5).all()


def test_training_step_gradients_agree_between_cpu_and_cuda():
    """One training step's pieces on CUDA — the uniform propagation (`power_sum` by Horner's rule with CUDA's
    allocating ``addmm`` on a CSR A_hat, one autograd node) and the BPR loss in pieces with hand-summed gradients
    (``index_add_`` into one (N, d) table of users and items) — give the CPU's loss and table gradient."""
    from homerank.gnn.losses import chunked_bpr_loss

    pairs, graph = _tiny_graph()
    rng = np.random.default_rng(1)
    users = torch.as_tensor(rng.integers(0, 50, 300))
    positives = torch.as_tensor(50 + rng.integers(0, 80, 300))
    negatives = torch.as_tensor(50 + rng.integers(0, 80, 300))
    torch.manual_seed(0)
    table = torch.randn(130, 16) * 0.1
    results = {}
    for device in ("cpu", "cuda"):
        model = LightGCNRecommender(50, 80, 16, 3).to(device)
        x = table.to(device, copy=True).requires_grad_(True)  # a leaf of its own on each device
        propagated = model.propagate(graph.adjacency(device), x)
        loss = chunked_bpr_loss(propagated, propagated, users.to(device), positives.to(device),
                                negatives.to(device), chunk=64)
        loss.backward()
        results[device] = (loss.detach().cpu(), x.grad.cpu())
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], atol=1e-6, rtol=1e-4)
    assert results["cpu"][1].abs().sum() > 0
