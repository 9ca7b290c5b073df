"""ItemIndex (gnn/item_index.py): exact search equals brute-force cosine, HNSW recall against exact, -1 for
missing rows, and a save/load roundtrip."""

import numpy as np
import pytest

from homerank.gnn.item_index import ItemIndex


def _brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ unit.T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, axis=1), rows


def test_exact_search_equals_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32) * rng.uniform(0.1, 5, size=(300, 1)).astype(np.float32)
    queries = rng.normal(size=(25, 16)).astype(np.float32)
    index = ItemIndex().build(vectors)
    assert index.exact and index.size == 300
    scores, rows = index.search(queries, 10)
    want_scores, want_rows = _brute_force(vectors.astype(np.float64), queries.astype(np.float64), 10)
    assert scores.shape == rows.shape == (25, 10) and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_missing_rows_are_minus_one():
    vectors = np.eye(3, 4, dtype=np.float32)
    scores, rows = ItemIndex().build(vectors).search(vectors[:1], 5)
    assert rows[0, 0] == 0 and set(rows[0, :3].tolist()) == {0, 1, 2}
    assert (rows[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()


def test_hnsw_recall_against_exact():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(4000, 32)).astype(np.float32)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    exact = ItemIndex().build(vectors)
    approximate = ItemIndex(exact_threshold=1000).build(vectors)
    assert exact.exact and not approximate.exact
    _, want = exact.search(queries, 10)
    _, got = approximate.search(queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist(), strict=True)])
    assert recall >= 0.95, recall


@pytest.mark.parametrize("threshold", [10_000, 100])
def test_save_load_roundtrip(tmp_path, threshold):
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(500, 8)).astype(np.float32)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    index = ItemIndex(exact_threshold=threshold).build(vectors)
    path = tmp_path / "sub" / "items.faiss"
    index.save(path)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["items.faiss"]  # no temp file left
    loaded = ItemIndex.load(path)
    assert loaded.size == 500 and loaded.exact == index.exact
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7), strict=True):
        np.testing.assert_array_equal(a, b)


def test_search_before_build_fails():
    with pytest.raises(RuntimeError):
        ItemIndex().search(np.zeros((1, 4), np.float32), 3)
