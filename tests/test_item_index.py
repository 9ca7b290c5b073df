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


def test_ivf_recall_against_exact_and_determinism(tmp_path):
    """Clustered vectors (as learned embeddings are): the inverted file finds >= 95% of the exact top 10; two builds
    return the same lists, as does the saved and loaded index; fewer vectors than the threshold: exact."""
    from homerank.gnn.item_index import ivf_lists

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 6000)] + 0.3 * rng.normal(size=(6000, 32)).astype(np.float32)
    queries = vectors[rng.choice(6000, 300, replace=False)]
    _, want = ItemIndex().build(vectors).search(queries, 10)
    index = ItemIndex(exact_threshold=1000, approximate="ivf").build(vectors)
    assert not index.exact and index.index.nlist == ivf_lists(6000) == 310
    _, got = index.search(queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist(), strict=True)])
    assert recall >= 0.95, recall
    _, again = ItemIndex(exact_threshold=1000, approximate="ivf").build(vectors).search(queries, 10)
    np.testing.assert_array_equal(got, again)
    index.save(tmp_path / "ivf.faiss")
    np.testing.assert_array_equal(ItemIndex.load(tmp_path / "ivf.faiss").search(queries, 10)[1], got)
    assert ItemIndex(exact_threshold=10_000, approximate="ivf").build(vectors).exact
    with pytest.raises(ValueError, match="approximate"):
        ItemIndex(approximate="lsh")


def test_neighbour_recall_bench_on_a_trained_run(homepage_run, tmp_path):
    """`python -m bench.neighbour_index_recall` on the tiny run: its keys, recall in [0, 1] (1 at k = 10 when the
    run has fewer items than the probed lists hold), timings, and recall_at by hand."""
    import json

    from bench.neighbour_index_recall import main, recall_at

    assert recall_at(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]]), 2) == 0.25
    out = tmp_path / "n.json"
    assert main(["--run", str(homepage_run[0]), "--anchors", "50", "--count", "20", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["anchors_sampled"] == min(50, result["items"]) and result["neighbours"] == 21
    assert set(result["recall"]) == {"10", "21"} and all(0.0 <= v <= 1.0 for v in result["recall"].values())
    assert result["seconds_all_anchors"]["exact"] > 0 and result["seconds_all_anchors"]["ivf"] > 0
    assert "cpu_count" in result["machine"]
