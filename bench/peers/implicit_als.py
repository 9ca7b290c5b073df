"""implicit's ALS on the same split: 256 factors, alpha 20 (confidence 1 + alpha * r), regularisation 0.01.

The curve is built by refitting from scratch with 1, 2, 4, 8 and 15 iterations (implicit's default is 15);
each point's time is that fit's wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse
import torch

from homerank.gnn.metrics import CSRIndex, evaluate_ranking
from homerank.gnn.scorer import embedding_scorer


def run_implicit_als(
    train_users: np.ndarray, train_items: np.ndarray, num_users: int, num_items: int, test: CSRIndex,
    train_index: CSRIndex, iterations: tuple[int, ...] = (1, 2, 4, 8, 15), factors: int = 256,
    alpha: float = 20.0, threads: int = 0, log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    user_items = scipy.sparse.csr_matrix(
        (np.ones(train_users.size, dtype=np.float32), (train_users, train_items)), shape=(num_users, num_items)
    )
    curve = []
    for n in iterations:
        model = AlternatingLeastSquares(factors=factors, regularization=0.01, alpha=alpha, iterations=n,
                                        random_state=0, num_threads=threads)
        start = time.perf_counter()
        with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads on top oversubscribe
            model.fit(user_items, show_progress=False)
        seconds = time.perf_counter() - start
        users = torch.from_numpy(np.asarray(model.user_factors))
        items = torch.from_numpy(np.asarray(model.item_factors))
        metrics = evaluate_ranking(embedding_scorer(users, items), test, train_index, [20])
        curve.append({"iterations": n, "seconds": round(seconds, 2), "recall@20": metrics["recall@20"],
                      "ndcg@20": metrics["ndcg@20"]})
        log(f"implicit-als {n} iterations: {seconds:.1f}s recall@20 {metrics['recall@20']:.4f} "
            f"ndcg@20 {metrics['ndcg@20']:.4f}")
    return curve
