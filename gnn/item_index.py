"""A nearest-neighbour index over item vectors (faiss): cosine similarity as the inner product of L2-normalised
vectors,

    cos(q, x_j) = (q / |q|) . (x_j / |x_j|),     top-k rows j by that score, best first.

Exact search (``IndexFlatIP``, O(q n d)) below ``exact_threshold`` vectors; above it an HNSW graph
(``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``, Malkov & Yashunin 2018), sub-linear per query, with recall
set by ``ef_search``, or an inverted file (``approximate="ivf"``: ``IndexIVFFlat``, L = round(4 sqrt(n)) k-means
lists trained on at most 64 L vectors drawn with a fixed seed; a query scans its ``ivf_probes`` closest lists, about
n * probes / L vectors, so a batch of n queries over n vectors costs O(n^1.5 d) instead of O(n^2 d)). Used by the
homepage ("because you viewed": the items closest to the last viewed one) and reusable for serving retrieval. A zero
vector stays zero (score 0 against everything).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import faiss
import numpy as np

EXACT_THRESHOLD = 50_000  # vectors; exact search below, HNSW above
HNSW_M = 32  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
IVF_PROBES = 32  # lists an IVF query scans (`python -m bench.neighbour_index_recall` measures the recall)
IVF_TRAINING_PER_LIST = 64


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` (n, d) scaled to unit L2 norm, as a C-contiguous float32 copy (zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {out.shape}")
    faiss.normalize_L2(out)
    return out


def ivf_lists(n: int) -> int:
    """The inverted file's list count for n vectors: round(4 sqrt(n)), at most n and at least 1 (146,806 items: 1,533
    lists)."""
    return max(1, min(n, int(round(4 * n ** 0.5))))


class ItemIndex:
    """Cosine top-k search over ``n`` item vectors of dimension ``d``; row j of the index is row j of the
    vectors given to `build`.

    ``exact_threshold``: up to this many vectors the search is exact (``IndexFlatIP``), above it approximate:
    ``approximate="hnsw"`` (``IndexHNSWFlat``, ``hnsw_m`` links per node, ``ef_construction`` / ``ef_search`` beam
    widths) or ``"ivf"`` (``IndexIVFFlat``, `ivf_lists` lists, ``ivf_probes`` scanned per query)."""

    def __init__(self, exact_threshold: int = EXACT_THRESHOLD, hnsw_m: int = HNSW_M,
                 ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = HNSW_EF_SEARCH,
                 approximate: str = "hnsw", ivf_probes: int = IVF_PROBES) -> None:
        if approximate not in ("hnsw", "ivf"):
            raise ValueError(f"approximate must be 'hnsw' or 'ivf', got {approximate!r}")
        self.exact_threshold = exact_threshold
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.approximate = approximate
        self.ivf_probes = ivf_probes
        self.index: faiss.Index | None = None

    @property
    def size(self) -> int:
        """Number of indexed vectors (0 before `build`)."""
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def exact(self) -> bool:
        """True when the index is a flat (exact) one."""
        return isinstance(self.index, faiss.IndexFlat)

    def build(self, vectors: np.ndarray) -> ItemIndex:
        """Index ``vectors`` (n, d) float32 after L2 normalisation; returns self."""
        normed = normalise(vectors)
        n, d = normed.shape
        if n <= self.exact_threshold:
            index = faiss.IndexFlatIP(d)
        elif self.approximate == "ivf":
            lists = ivf_lists(n)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).choice(n, min(n, IVF_TRAINING_PER_LIST * lists), replace=False)
            index.train(normed[np.sort(sample)])
            index.nprobe = min(self.ivf_probes, lists)
        else:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        index.add(normed)
        self.index = index
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows closest in cosine to each of ``queries`` (q, d): ``(scores (q, k) float32, rows (q, k)
        int64)``, best first; where fewer than k rows exist (or HNSW finds fewer), rows are -1 and scores -inf."""
        if self.index is None:
            raise RuntimeError("ItemIndex.search before build or load")
        normed = normalise(queries)
        if normed.shape[1] != self.index.d:
            raise ValueError(f"queries have dimension {normed.shape[1]}, the index {self.index.d}")
        if k <= 0 or normed.shape[0] == 0:
            return np.zeros((normed.shape[0], max(k, 0)), np.float32), np.zeros((normed.shape[0], max(k, 0)), np.int64)
        if isinstance(self.index, faiss.IndexHNSW):
            self.index.hnsw.efSearch = max(self.ef_search, k)
        scores, rows = self.index.search(normed, k)
        rows = rows.astype(np.int64, copy=False)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32, copy=False)
        return scores, rows

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (faiss' own format) through a temporary sibling file and a rename, so a
        reader sees the previous file or the complete new one."""
        if self.index is None:
            raise RuntimeError("ItemIndex.save before build")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        """An index written by `save`; HNSW search width back to the default ``ef_search``."""
        index = faiss.read_index(str(path))
        out = cls()
        out.index = index
        if isinstance(index, faiss.IndexHNSW):
            out.hnsw_m = int(index.hnsw.nb_neighbors(1))
            out.ef_search = int(index.hnsw.efSearch)
        return out
