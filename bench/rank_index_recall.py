"""How much of the exact ranking the rank stage's item-index path keeps, on a trained run.

    python -m bench.rank_index_recall --run RUN [--users 10000] [--k 20] [--json FILE]

Above ``rank.index_min_items`` the rank stage (and ``homerank.Run.recommend``) ranks a model user from the item
index's candidates: ``rank.index_overfetch`` x k items (plus the user's excluded ones) retrieved by the cosine of the
lifted vectors (`homerank.jobs.recommend.lift_items`), HNSW above ``rank.index_exact_items``, then re-scored
exactly by the run's scorer. For a random sample of the run's model users this compares that top-k with the exact
top-k (every item scored): overlap@k = |index top-k ∩ exact top-k| / k, averaged over the users, for the HNSW
settings below, an exact flat index, and two alternatives on the raw inner product (HNSW, IVF), with build and
ranking seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.machine import machine_info, run_parser, write_result
from homerank.jobs.recommend import ItemSearch, Recommender
from homerank.jobs.rundir import RunDir


class InnerProductSearch:
    """Candidates by the raw inner product u . x_j through a faiss index (no lift): the alternatives measured."""

    exact = False

    def __init__(self, index: faiss.Index, ef_search: int = 0) -> None:
        self.index, self.ef_search = index, ef_search

    @classmethod
    def hnsw(cls, items: np.ndarray, ef_search: int) -> InnerProductSearch:
        index = faiss.IndexHNSWFlat(items.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
        index.add(np.ascontiguousarray(items, dtype=np.float32))
        return cls(index, ef_search)

    @classmethod
    def ivf(cls, items: np.ndarray, lists: int, probes: int) -> InnerProductSearch:
        vectors = np.ascontiguousarray(items, dtype=np.float32)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(items.shape[1]), items.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.add(vectors)
        index.nprobe = probes
        return cls(index)

    def candidates(self, user_vectors: np.ndarray, count: int) -> np.ndarray:
        if self.ef_search:
            self.index.hnsw.efSearch = max(self.ef_search, count)
        return self.index.search(np.ascontiguousarray(user_vectors, dtype=np.float32), count)[1]


def _lifted(items: np.ndarray, exact_items: int, ef_search: int) -> ItemSearch:
    search = ItemSearch.build(items, exact_items)
    search.index.ef_search = ef_search
    return search


def overlap_at_k(got: dict[Any, set], exact: dict[Any, set]) -> float:
    """Mean over the users of |got_u ∩ exact_u| / |exact_u|."""
    return float(np.mean([len(got.get(user, set()) & items) / len(items) for user, items in exact.items() if items]))


def index_recall(run: Path, users: int, k: int, seed: int = 0) -> dict[str, Any]:
    recommender = Recommender.from_run(RunDir(run), [], "cpu")
    model_users = recommender.all_users()[: recommender.scorer.num_users]
    sample = np.random.default_rng(seed).choice(model_users, size=min(users, len(model_users)), replace=False)
    started = time.perf_counter()
    exact = recommender.recommend(sample, k).groupby("user_id")["item_id"].apply(set).to_dict()
    result: dict[str, Any] = {"run": str(run), "items": recommender.scorer.num_items, "users": len(sample), "k": k,
                              "exact_seconds": round(time.perf_counter() - started, 2), "variants": {}}
    items = recommender.scorer.item_embeddings.numpy()
    variants: dict[str, tuple[Callable[[], Any], int]] = {
        "lifted_hnsw_ef128_overfetch4 (the default)": (lambda: _lifted(items, 0, 128), 4),
        "lifted_hnsw_ef128_overfetch8": (lambda: _lifted(items, 0, 128), 8),
        "lifted_hnsw_ef512_overfetch4": (lambda: _lifted(items, 0, 512), 4),
        "lifted_flat_overfetch4": (lambda: _lifted(items, 10**12, 128), 4),
        "inner_product_hnsw_ef128_overfetch4": (lambda: InnerProductSearch.hnsw(items, 128), 4),
        "inner_product_ivf_256_lists_64_probes_overfetch4": (lambda: InnerProductSearch.ivf(items, 256, 64), 4),
    }
    for name, (build, overfetch) in variants.items():
        started = time.perf_counter()
        recommender.item_search, recommender.overfetch = build(), overfetch
        built = time.perf_counter() - started
        started = time.perf_counter()
        got = recommender.recommend(sample, k).groupby("user_id")["item_id"].apply(set).to_dict()
        result["variants"][name] = {"overlap_at_k": round(overlap_at_k(got, exact), 4),
                                    "build_seconds": round(built, 2),
                                    "rank_seconds": round(time.perf_counter() - started, 2)}
        print(name, result["variants"][name], flush=True)
    result["machine"] = machine_info(("faiss-cpu",))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = run_parser("bench.rank_index_recall", __doc__)
    parser.add_argument("--users", type=int, default=10_000, help="model users sampled (default 10000)")
    parser.add_argument("--k", type=int, default=20, help="ranking length (default 20)")
    args = parser.parse_args(argv)
    result = index_recall(args.run, args.users, args.k)
    write_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
