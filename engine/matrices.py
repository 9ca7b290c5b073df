"""Sparse matrices from (user, item) pairs and their degree normalisation, shared by the graph, the linear
filter and the evaluation masks.

For pairs (u_k, i_k) with values v_k (default 1) the U x I matrix is R_ui = sum_k [u_k = u, i_k = i] v_k
(duplicates summed). Degree normalisations use d^-1/2 with the convention 0^-1/2 = 0, so isolated rows and
columns stay zero instead of becoming inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse


def csr_from_pairs(users: Any, items: Any, num_users: int, num_items: int, values: Any = None,
                   sparse: Any = scipy.sparse, binary: bool = False) -> Any:
    """R (num_users x num_items) in CSR with sorted indices; duplicate pairs are summed, or set to 1 with
    ``binary``. ``sparse`` is the backend's module (scipy.sparse or cupyx.scipy.sparse)."""
    if values is None:
        values = np.ones(len(users), dtype=np.float32)
    matrix = sparse.coo_matrix((values, (users, items)), shape=(num_users, num_items)).tocsr()
    matrix.sum_duplicates()
    if binary:
        matrix.data[:] = 1
    return matrix


def inverse_sqrt(degree: Any) -> Any:
    """d^-1/2 elementwise with 0 for d = 0; ``degree`` is a numpy, cupy or torch array of any shape."""
    positive = degree > 0
    return (degree + ~positive) ** -0.5 * positive
