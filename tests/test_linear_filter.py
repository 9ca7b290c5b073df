import math

import numpy as np
import pytest
import torch

from homerank.gnn import linear_filter as linear_filter_module
from homerank.gnn.linear_filter import LinearFilter
from homerank.gnn.metrics import CSRIndex, evaluate_blends, evaluate_ranking
from homerank.gnn.scorer import blend_scorers, popularity_prior, standardise


@pytest.mark.parametrize("dense_max_items", [0, 100], ids=["products_with_R", "item_operator"])
@pytest.mark.parametrize("svd_solver", ["arpack", "randomized"])
def test_gf_cf_scores_match_the_dense_formula(svd_solver, dense_max_items, monkeypatch):
    # every formula below holds for both scoring paths: products with R~ per block of users, and the (I, I)
    # operator F built once from the one-hot rows (s_u = r_u F)
    monkeypatch.setattr(linear_filter_module, "DENSE_MAX_ITEMS", dense_max_items)
    rng = np.random.default_rng(0)
    dense = (rng.random((12, 9)) < 0.35).astype(np.float64)
    dense[:, 0] = 1  # no empty item column
    users, items = np.nonzero(dense)
    fitted = LinearFilter.fit(users, items, 12, 9, k=3, alpha=0.5, svd_solver=svd_solver, svd_iterations=8)
    du, di = dense.sum(1), dense.sum(0)
    norm = dense / np.sqrt(np.where(du > 0, du, 1))[:, None] / np.sqrt(di)[None, :]
    v = fitted.vectors.numpy().astype(np.float64)
    expected = dense @ norm.T @ norm + 0.5 * (dense / np.sqrt(di)) @ v @ v.T * np.sqrt(di)
    got = fitted.scorer()(torch.arange(12)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the singular vectors are those of the normalised matrix: V^T V = I and they span its top subspace
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-5)
    top = np.linalg.svd(norm)[2][:3]
    np.testing.assert_allclose(v @ v.T, top.T @ top, atol=1e-4)  # same subspace (order and sign free)
    # sharpening: s - beta * s P with P = R~^T R~ (one Euler step of the reverse heat equation)
    sharpened = LinearFilter(fitted.interactions, fitted.normalised, fitted.vectors, fitted.item_degree, 0.5, 0.7)
    np.testing.assert_allclose(sharpened.scorer()(torch.arange(12)).numpy(), expected - 0.7 * expected @ norm.T @ norm,
                               rtol=1e-4, atol=1e-4)
    restored = LinearFilter.from_state(sharpened.state())
    assert restored.sharpening == pytest.approx(0.7) and restored.alpha == pytest.approx(0.5)
    # Euler in two steps of h = T/2: s (I - h P)^2
    p = norm.T @ norm
    two_steps = LinearFilter(fitted.interactions, fitted.normalised, fitted.vectors, fitted.item_degree, 0.5, 1.6,
                             "euler", 2)
    np.testing.assert_allclose(two_steps.scorer()(torch.arange(12)).numpy(),
                               expected @ (np.eye(9) - 0.8 * p) @ (np.eye(9) - 0.8 * p), rtol=1e-4, atol=1e-4)
    # one RK4 step of h on ds/dt = -s P is the 4th-order Taylor polynomial of exp(-h P)
    h = 2.5
    rk4 = LinearFilter(fitted.interactions, fitted.normalised, fitted.vectors, fitted.item_degree, 0.5, h, "rk4", 1)
    taylor = sum(np.linalg.matrix_power(-h * p, n) / math.factorial(n) for n in range(5))
    np.testing.assert_allclose(rk4.scorer()(torch.arange(12)).numpy(), expected @ taylor, rtol=1e-4, atol=1e-4)
    restored = LinearFilter.from_state(rk4.state())
    assert (restored.sharpening_solver, restored.sharpening_steps) == ("rk4", 1)
    # users scored in chunks (any order, any chunk size) get the same rows as one block
    shuffled = torch.tensor([7, 2, 11, 0, 5, 9, 1, 3, 10, 4, 8, 6])
    np.testing.assert_allclose(two_steps.scorer(chunk=5)(shuffled).numpy(),
                               two_steps.scorer()(torch.arange(12)).numpy()[shuffled.numpy()], rtol=1e-5, atol=1e-6)
    # and the two paths agree
    np.testing.assert_allclose(two_steps.scorer(dense_max_items=100)(shuffled).numpy(),
                               two_steps.scorer(dense_max_items=0)(shuffled).numpy(), rtol=1e-5, atol=1e-6)


def test_ensemble_mixes_standardised_scores():
    first = lambda batch: torch.tensor([[1.0, 2.0, 3.0]])  # noqa: E731
    second = lambda batch: torch.tensor([[30.0, 20.0, 10.0]])  # noqa: E731
    batch = torch.tensor([0])
    assert torch.equal(blend_scorers(first, second, 0.0)(batch), first(batch))
    assert torch.equal(blend_scorers(first, second, 1.0)(batch), second(batch))
    mixed = blend_scorers(first, second, 0.5)(batch)
    torch.testing.assert_close(mixed, torch.zeros(1, 3))  # opposite orders cancel exactly
    assert standardise(torch.tensor([[1.0, 3.0]]))[0].tolist() == pytest.approx([-0.7071, 0.7071], abs=1e-4)


def test_blend_evaluation_matches_one_scorer_at_a_time():
    torch.manual_seed(0)
    a_scores, b_scores = torch.randn(6, 10), torch.randn(6, 10)
    first, second = (lambda batch: a_scores[batch]), (lambda batch: b_scores[batch])  # noqa: E731
    train = CSRIndex.from_pairs(np.array([0, 1, 2]), np.array([1, 2, 3]), 6, 10)
    truth = CSRIndex.from_pairs(np.array([0, 1, 3, 4, 5, 5]), np.array([4, 5, 6, 7, 8, 9]), 6, 10)
    blends = evaluate_blends(first, second, [0.0, 0.4, 1.0], truth, train, [2, 5], batch_size=4)
    for weight in (0.0, 0.4, 1.0):
        mixed = lambda batch, w=weight: (1 - w) * standardise(first(batch)) + w * standardise(second(batch))  # noqa: E731
        assert blends[weight] == evaluate_ranking(mixed, truth, train, [2, 5], batch_size=4)


def test_popularity_prior_is_the_z_scored_log_degree():
    # log(1 + d) = 0, 1, 2 -> mean 1, sample std 1 -> z = -1, 0, 1
    degree = torch.tensor([0.0, math.e - 1, math.e**2 - 1])
    torch.testing.assert_close(popularity_prior(degree), torch.tensor([[-1.0, 0.0, 1.0]]))


def test_blends_with_a_prior_match_the_blend_scorers():
    torch.manual_seed(1)
    a_scores, b_scores = torch.randn(6, 10), torch.randn(6, 10)
    first, second = (lambda batch: a_scores[batch]), (lambda batch: b_scores[batch])  # noqa: E731
    prior = popularity_prior(torch.arange(10.0))
    train = CSRIndex.from_pairs(np.array([0, 1, 2]), np.array([1, 2, 3]), 6, 10)
    truth = CSRIndex.from_pairs(np.array([0, 1, 3, 4, 5, 5]), np.array([9, 5, 6, 7, 8, 9]), 6, 10)
    candidates = [(0.0, 0.0), (0.4, 0.0), (0.4, 0.5), (1.0, 2.0)]
    blends = evaluate_blends(first, second, candidates, truth, train, [2, 5], batch_size=4, prior=prior)
    for share, weight in candidates:
        scorer = blend_scorers(first, second, share, prior, weight)
        assert blends[(share, weight)] == evaluate_ranking(scorer, truth, train, [2, 5], batch_size=4)
    # the prior's share adds p * z(log(1 + d)) to the standardised blend, for every user alike
    batch = torch.tensor([0, 3])
    torch.testing.assert_close(blend_scorers(first, second, 0.4, prior, 0.5)(batch),
                               0.6 * standardise(a_scores[batch]) + 0.4 * standardise(b_scores[batch]) + 0.5 * prior)
    # a large prior weight turns the ranking into popularity: item 9 first for everyone it is not masked for
    top = torch.topk(blend_scorers(first, second, 0.4, prior, 100.0)(torch.arange(6)), 1).indices.flatten()
    assert top.tolist() == [9] * 6
