"""PyG's own ``examples/lightgcn.py`` recipe on a LightGCN-format split, for side-by-side runs.

Faithful to the example: ``torch_geometric.nn.LightGCN(num_nodes, 64, num_layers=2)`` over the raw
``edge_index`` (PyG's default message passing with its built-in gcn_norm), Adam lr 1e-3, batches of 8192
training edges, one uniformly random negative item per positive (not checked against positives),
``model.recommendation_loss(pos, neg, node_id=edge_label_index.unique())`` (BPR + lambda_reg 1e-4).
The test metric is computed after every epoch with homerank's evaluator (same protocol as ours), and its
time is not counted as training time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch_geometric.nn import LightGCN

from homerank.gnn.metrics import CSRIndex, evaluate_ranking
from homerank.gnn.scorer import embedding_scorer


def run_pyg_example(
    train_users: torch.Tensor, train_items: torch.Tensor, num_users: int, num_items: int, test: CSRIndex,
    train_index: CSRIndex, budget_s: float, seed: int = 0, log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    edge_index = torch.stack([train_users, train_items + num_users])
    edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    model = LightGCN(num_users + num_items, embedding_dim=64, num_layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    label_index = torch.stack([train_users, train_items + num_users])
    loader = torch.utils.data.DataLoader(range(label_index.size(1)), shuffle=True, batch_size=8192)
    curve, train_seconds, epoch = [], 0.0, 0
    while train_seconds < budget_s:
        epoch += 1
        start = time.perf_counter()
        for index in loader:
            positive = label_index[:, index]
            negative = torch.stack([positive[0], torch.randint(num_users, num_users + num_items, (index.numel(),))])
            edge_label_index = torch.cat([positive, negative], dim=1)
            pos_rank, neg_rank = model(edge_index, edge_label_index).chunk(2)
            loss = model.recommendation_loss(pos_rank, neg_rank, node_id=edge_label_index.unique())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if train_seconds + time.perf_counter() - start > budget_s:
                break
        train_seconds += time.perf_counter() - start
        with torch.no_grad():
            embedding = model.get_embedding(edge_index)
        metrics = evaluate_ranking(embedding_scorer(embedding[:num_users], embedding[num_users:]), test,
                                   train_index, [20])
        curve.append({"epoch": epoch, "seconds": round(train_seconds, 2), "recall@20": metrics["recall@20"],
                      "ndcg@20": metrics["ndcg@20"]})
        log(f"pyg-example epoch {epoch}: {train_seconds:.0f}s recall@20 {metrics['recall@20']:.4f} "
            f"ndcg@20 {metrics['ndcg@20']:.4f}")
    return curve
