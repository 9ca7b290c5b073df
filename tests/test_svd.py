import numpy as np
import pytest
import scipy.sparse

from homerank.gnn.svd import truncated_svd


def _sparse(rows: int, cols: int, density: float, seed: int) -> scipy.sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    return scipy.sparse.random(rows, cols, density=density, random_state=rng, format="csr", dtype=np.float64)


@pytest.mark.parametrize("solver", ["arpack", "randomized"])
def test_top_singular_triplets_match_numpy(solver):
    matrix = _sparse(80, 50, 0.15, 0)
    left, values, right = truncated_svd(matrix, 6, solver, iterations=8)
    exact_u, exact_s, exact_vt = np.linalg.svd(matrix.toarray())
    np.testing.assert_allclose(values, exact_s[:6], rtol=1e-3)  # descending, as numpy's
    np.testing.assert_allclose(right.T @ right, np.eye(6), atol=1e-4)
    np.testing.assert_allclose(left.T @ left, np.eye(6), atol=1e-4)
    np.testing.assert_allclose(matrix @ right, left * values, atol=1e-3)  # A V = U S
    # the same top subspace (signs free); the gap after the 6th value keeps it well defined
    np.testing.assert_allclose(right @ right.T, exact_vt[:6].T @ exact_vt[:6], atol=1e-2)


def test_randomized_is_exact_on_a_low_rank_matrix_and_seeded():
    rng = np.random.default_rng(1)
    dense = rng.random((40, 3)) @ rng.random((3, 30))  # rank 3 < k + oversample: one sketch spans it
    matrix = scipy.sparse.csr_matrix(dense)
    _, values, right = truncated_svd(matrix, 3, "randomized", iterations=0, seed=7)
    np.testing.assert_allclose(values, np.linalg.svd(dense, compute_uv=False)[:3], rtol=1e-4)
    again = truncated_svd(matrix, 3, "randomized", iterations=0, seed=7)[2]
    np.testing.assert_array_equal(right, again)
