"""Spectral warm start for LightGCN: layer-0 embeddings from the truncated SVD of the normalised interaction
matrix, so training starts from the best rank-d approximation of R~ instead of noise.

With R~ = D_U^-1/2 R D_I^-1/2 ~= U_d S_d V_d^T (top-d singular triplets, U_d (U x d), V_d (I x d)):

    E^(0) = c * [U_d S_d^1/2 ; V_d S_d^1/2]          (N x d),   so <E_u, E_i> = c^2 (U_d S_d V_d^T)_ui

The singular vectors are also eigenvectors of A_hat = [[0, R~], [R~^T, 0]] (eigenvalues +-sigma), so
LightGCN's propagation keeps this subspace and only re-weights its directions. ``c`` makes the mean row norm
equal to that of the default N(0, 0.1^2) initialisation, so the learning rate means the same in both.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from homerank.gnn.linear_filter import normalised_interactions
from homerank.gnn.svd import truncated_svd
from torch import Tensor

log = logging.getLogger(__name__)


def spectral_embeddings(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, dim: int,
                        target_norm: float, seed: int = 0) -> Tensor:
    """E^(0) of the module docstring, shape (num_users + num_items, dim), float32."""
    _, normalised, _ = normalised_interactions(users, items, num_users, num_items)
    k = min(dim, min(num_users, num_items) - 1)
    left, values, right = truncated_svd(normalised, k, seed=seed)
    root = np.sqrt(np.clip(values, 0, None))
    stacked = np.vstack([left * root, right * root])
    if k < dim:  # tiny graphs: pad with zeros up to the embedding width
        stacked = np.hstack([stacked, np.zeros((stacked.shape[0], dim - k))])
    mean_norm = np.linalg.norm(stacked, axis=1).mean()
    stacked *= target_norm / mean_norm if mean_norm > 0 else 1.0
    log.info("spectral warm start: E^(0) from the top-%d singular triplets (gnn.svd logs the SVD's time)", k)
    return torch.from_numpy(stacked.astype(np.float32))
