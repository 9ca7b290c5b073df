"""LightGCN on PyTorch Geometric.

With layer-0 embeddings E^(0) (N x d, N = U + I) and the normalised adjacency A_hat (engine.graph):

    E^(l+1) = A_hat E^(l)              (PyG ``LGConv`` with ``normalize=False``: A_hat is precomputed)
    E       = sum_l alpha_l E^(l),     alpha_l = 1 / (L + 1)
    score(u, i) = <E_u, E_{U+i}>

A_hat is passed as a torch sparse CSR tensor, so every layer is one sparse-dense product (PyG's ``spmm``
path) instead of PyG's gather/scatter message passing, which is ~15x slower on CPU for this graph.
Because A_hat is symmetric, the gradient of A_hat X with respect to X is A_hat G: `SymmetricLGConv` gives
autograd exactly that product instead of letting it transpose the CSR matrix on every backward pass
(about 4x faster per training step on CPU; the PyG path stays the reference in the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import LGConv
from torch_geometric.nn.models import LightGCN


class _SymmetricSpmm(torch.autograd.Function):
    """Y = A X for a symmetric sparse A (no gradient w.r.t. A): dL/dX = A^T G = A G."""

    @staticmethod
    def forward(ctx, adjacency: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(adjacency)
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        (adjacency,) = ctx.saved_tensors
        return None, torch.sparse.mm(adjacency, grad)


class SymmetricLGConv(LGConv):
    """PyG's ``LGConv`` for a precomputed, symmetric, sparse A_hat (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(normalize=False)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        if isinstance(adj_t, Tensor) and adj_t.layout in (torch.sparse_csr, torch.sparse_coo):
            return _SymmetricSpmm.apply(adj_t, x)
        return super().message_and_aggregate(adj_t, x)


class LightGCNRecommender(torch.nn.Module):
    """PyG ``LightGCN`` over the bipartite user-item graph.

    Args:
        num_users: U. num_items: I. embedding_dim: d. num_layers: L.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items
        self.lightgcn = LightGCN(num_users + num_items, embedding_dim, num_layers, normalize=False)
        self.lightgcn.convs = torch.nn.ModuleList([SymmetricLGConv() for _ in range(num_layers)])
        torch.nn.init.normal_(self.lightgcn.embedding.weight, std=0.1)

    @property
    def layer0(self) -> Tensor:
        """E^(0), shape (N, d)."""
        return self.lightgcn.embedding.weight

    def forward(self, adjacency: Tensor) -> tuple[Tensor, Tensor]:
        """Final embeddings split into users (U, d) and items (I, d)."""
        out = self.lightgcn.get_embedding(adjacency)
        return out[: self.num_users], out[self.num_users :]

    @torch.no_grad()
    def embeddings(self, adjacency: Tensor, cosine: bool = False) -> tuple[Tensor, Tensor]:
        """Embeddings used for scoring, (U, d) and (I, d); L2-normalised rows when the model was trained
        on cosine scores (sampled softmax), so that <E_u, E_i> ranks exactly as training scored."""
        was_training = self.training
        self.eval()
        users, items = self.forward(adjacency)
        self.train(was_training)
        if cosine:
            users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        return users.detach(), items.detach()
