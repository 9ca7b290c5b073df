"""The spectral warm start against a dense SVD computed by numpy."""

import numpy as np
import torch
from homerank.gnn.spectral import spectral_embeddings


def test_warm_start_reproduces_the_rank_k_approximation():
    users = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    items = np.array([0, 1, 1, 2, 3, 2, 3, 4])
    dense = np.zeros((4, 5))
    dense[users, items] = 1
    normalised = dense / np.sqrt(dense.sum(1, keepdims=True)) / np.sqrt(dense.sum(0, keepdims=True))
    left, values, right_t = np.linalg.svd(normalised)
    rank3 = (left[:, :3] * values[:3]) @ right_t[:3]  # svds takes k = min(U, I) - 1 = 3 here
    emb = spectral_embeddings(users, items, 4, 5, dim=6, target_norm=2.0)
    assert emb.shape == (9, 6) and torch.all(emb[:, 3:] == 0)  # padded beyond the available rank
    assert abs(float(emb.norm(dim=1).mean()) - 2.0) < 1e-5
    scores = (emb[:4] @ emb[4:].T).double().numpy()
    scale = scores.ravel() @ rank3.ravel() / (rank3.ravel() @ rank3.ravel())  # c^2
    np.testing.assert_allclose(scores, scale * rank3, atol=1e-5)
