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

With item content (``item_features`` X (I, F), `homerank.gnn.content`), layer 0 of item i is
m_i e_{U+i} + x_i W instead of the ID row e_{U+i} alone (m_i = 1 for items with training pairs); an item
outside the graph scores with its cold embedding alpha_0 x_i W = x_i W / (L + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import LGConv
from torch_geometric.nn.models import LightGCN

from homerank.gnn.content import ContentProjection


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


def power_sum(adjacency: Tensor, x: Tensor, layers: int, alpha: float) -> Tensor:
    """alpha * sum_{l=0..L} A^l X for a sparse A (N, N) and X (N, d), by Horner's rule: S_0 = X,
    S_{k+1} = X + A S_k (one ``addmm`` per layer), S_L = sum_l A^l X. On the CPU the S_k alternate between two
    (N, d) buffers (``addmm(..., out=)``), so the sum takes two tables besides X whatever L (the layer by layer sum
    took four: the sum, the layer, the next layer and spmm's own output)."""
    if layers == 0:
        return x * alpha
    buffers = [torch.empty_like(x), torch.empty_like(x)] if x.device.type == "cpu" and \
        adjacency.layout == torch.sparse_csr else None
    total = x
    for layer in range(layers):
        total = torch.addmm(x, adjacency, total) if buffers is None else \
            torch.addmm(x, adjacency, total, out=buffers[layer % 2])
    return total.mul_(alpha)


BACKWARD_COLUMN_PIECES = 4  # the backward pass's power sum, column piece by column piece (CPU, CSR A)


def power_sum_in_place(adjacency: Tensor, grad: Tensor, layers: int, alpha: float,
                       pieces: int = BACKWARD_COLUMN_PIECES) -> Tensor:
    """``power_sum`` of ``grad`` (N, d) written over ``grad`` itself, ``pieces`` column blocks at a time: the columns
    of alpha sum_l A^l G are the power sums of G's columns, so each block is copied out (N, d / pieces), summed with
    two buffers of its width and written back. Besides G the sum then takes 3 / pieces of a table instead of two
    tables (at 3 * 10^7 events, 4 pieces: 133 MiB instead of 354 MiB at the training step's peak). Each output
    element sums the same products in the same order as the whole-width product (CSR rows in column order)."""
    width = grad.shape[1]
    step = -(-width // max(pieces, 1))
    for start in range(0, width, step):
        block = grad[:, start : start + step].contiguous()
        grad[:, start : start + step] = power_sum(adjacency, block, layers, alpha)
        del block
    return grad


class _UniformPropagation(torch.autograd.Function):
    """E = alpha sum_l A^l X for a symmetric sparse A (LightGCN with uniform alpha_l), as one autograd node:
    dL/dX = alpha sum_l (A^T)^l G = alpha sum_l A^l G, the same sum of the gradient G. Nothing but A is saved and
    the layers are never kept: at 3 * 10^7 events each (N, d) table is 177 MiB, and the layer-by-layer graph held
    about four of them in the forward pass and as many in the backward pass. With ``in_place`` (the training step,
    whose loss scatters its rows' gradient into a buffer of its own that nothing reads after this node) the CPU's
    backward pass sums G over G itself, column block by column block (`power_sum_in_place`); a caller's own
    gradient tensor (``y.backward(g)``) would be overwritten, hence off by default."""

    @staticmethod
    def forward(ctx, adjacency: Tensor, x: Tensor, layers: int, alpha: float,  # type: ignore[override]
                in_place: bool = False) -> Tensor:
        ctx.save_for_backward(adjacency)
        ctx.layers, ctx.alpha, ctx.in_place = layers, alpha, in_place
        return power_sum(adjacency, x, layers, alpha)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None, None, None]:  # type: ignore[override]
        (adjacency,) = ctx.saved_tensors
        if ctx.in_place and grad.device.type == "cpu" and adjacency.layout == torch.sparse_csr and \
                not grad.requires_grad:
            # a view or an expanded tensor (never the losses' scatters) is copied: the sum must own its storage
            owned = grad if grad.is_contiguous() and grad._base is None else grad.contiguous().clone()
            return None, power_sum_in_place(adjacency, owned, ctx.layers, ctx.alpha), None, None, None
        return None, power_sum(adjacency, grad.contiguous(), ctx.layers, ctx.alpha), None, None, None


class SymmetricLGConv(LGConv):
    """PyG's ``LGConv`` for a precomputed, symmetric, sparse A_hat (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(normalize=False)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        if isinstance(adj_t, Tensor) and adj_t.layout in (torch.sparse_csr, torch.sparse_coo):
            return _SymmetricSpmm.apply(adj_t, x)
        return super().message_and_aggregate(adj_t, x)


@dataclass
class PreviousModel:
    """What a warm start takes from an earlier model whose id maps the new ones extend (its users and items are the
    first U0 and I0 of the new ones, in the same order; `homerank.engine.encode.extend_index`).

    users: (U0, d) and items: (I0, d), its layer-0 ID rows; content: its content projection's state (a model trained
    with ``train.content``), or None."""

    users: Tensor
    items: Tensor
    content: dict[str, Tensor] | None = None


class LightGCNRecommender(torch.nn.Module):
    """PyG ``LightGCN`` over the bipartite user-item graph, optionally with item content in layer 0.

    Args:
        num_users: U. num_items: I. embedding_dim: d. num_layers: L.
        item_features: X, (I, F) float32 content features of the graph's items (None: no content).
        trained_items: (I,) bool, m_i = item i has training pairs (default: all); the ID rows of the others
            never enter layer 0, so their embedding comes from x_i W.
        content_blocks: number of feature blocks in X (scales W's initialisation only).

    Both tensors are buffers that are not saved in the state_dict: a model is rebuilt from its data.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, num_layers: int,
                 item_features: Tensor | None = None, trained_items: Tensor | None = None,
                 content_blocks: int = 1) -> None:
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items
        self.lightgcn = LightGCN(num_users + num_items, embedding_dim, num_layers, normalize=False)
        self.lightgcn.convs = torch.nn.ModuleList([SymmetricLGConv() for _ in range(num_layers)])
        torch.nn.init.normal_(self.lightgcn.embedding.weight, std=0.1)
        self.content: ContentProjection | None = None
        if item_features is not None:
            if item_features.shape[0] != num_items:
                raise ValueError(f"item_features has {item_features.shape[0]} rows for {num_items} items")
            self.content = ContentProjection(int(item_features.shape[1]), embedding_dim, content_blocks)
            self.register_buffer("item_features", item_features.float(), persistent=False)
            mask = torch.ones(num_items, dtype=torch.bool) if trained_items is None else trained_items.bool()
            self.register_buffer("id_mask", mask.float()[:, None], persistent=False)  # (I, 1) m_i

    @torch.no_grad()
    def warm_start(self, previous: PreviousModel) -> None:
        """Layer 0 starts from ``previous``: ID rows 0..U0-1 and U..U+I0-1 become its user and item rows (the ids it
        knew), every other row keeps its N(0, 0.1^2) draw; its content projection too, when both have one of the
        same shape. A different embedding size, or more ids than this model has, is a ValueError."""
        table = self.lightgcn.embedding.weight
        dim = table.shape[1]
        for name, rows, room in (("users", previous.users, self.num_users), ("items", previous.items,
                                                                             self.num_items)):
            if rows.ndim != 2 or rows.shape[1] != dim or rows.shape[0] > room:
                raise ValueError(f"previous {name}: shape {tuple(rows.shape)} does not fit ({room}, {dim})")
        table[: previous.users.shape[0]] = previous.users.to(table)
        table[self.num_users : self.num_users + previous.items.shape[0]] = previous.items.to(table)
        if self.content is not None and previous.content is not None:
            own = self.content.state_dict()
            if all(name in own and own[name].shape == value.shape for name, value in previous.content.items()):
                self.content.load_state_dict(previous.content)

    @property
    def has_content(self) -> bool:
        return self.content is not None

    @property
    def layer0(self) -> Tensor:
        """E^(0), shape (N, d): the ID table, plus the content projection of the items when there is one."""
        table = self.lightgcn.embedding.weight
        if self.content is None:
            return table
        items = table[self.num_users :] * self.id_mask + self.content(self.item_features)
        return torch.cat([table[: self.num_users], items])

    def cold_table(self) -> Tensor:
        """(I, d) the graph items' cold embeddings alpha_0 x_i W, differentiable (ID dropout scores with them)."""
        if self.content is None:
            raise ValueError("this model has no content projection (train.content.features is empty)")
        return self.content(self.item_features) * self.lightgcn.alpha[0]

    def propagate(self, adjacency: Tensor, layer0: Tensor | None = None, gradient_in_place: bool = False) -> Tensor:
        """E = sum_l alpha_l A_hat^l E^(0), (N, d); ``layer0`` defaults to `layer0`. ``gradient_in_place``: the
        backward pass may sum E's gradient over its own buffer (`_UniformPropagation`; the training step's losses).

        With LightGCN's uniform alpha_l = 1 / (L + 1) this is (sum_l E^(l)) / (L + 1): one scaling of an (N, d)
        table instead of L + 1 (and as many in the backward pass; ~0.25 s of a 5.6 s step at 10M events), and with
        a sparse A_hat one autograd node (`_UniformPropagation`) that keeps no layer."""
        x = self.layer0 if layer0 is None else layer0
        alpha = self.lightgcn.alpha
        uniform = bool((alpha == alpha[0]).all())
        if uniform and isinstance(adjacency, Tensor) and adjacency.layout in (torch.sparse_csr, torch.sparse_coo):
            return _UniformPropagation.apply(adjacency, x, len(self.lightgcn.convs), float(alpha[0]),
                                             gradient_in_place)
        if uniform:
            out = x
            for conv in self.lightgcn.convs:
                x = conv(x, adjacency)
                out = out + x
            return out * alpha[0]
        out = x * alpha[0]
        for i, conv in enumerate(self.lightgcn.convs):
            x = conv(x, adjacency)
            out = out + x * alpha[i + 1]
        return out

    def forward(self, adjacency: Tensor, layer0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final embeddings split into users (U, d) and items (I, d)."""
        out = self.propagate(adjacency, layer0)
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

    @torch.no_grad()
    def cold_item_embeddings(self, features: Tensor, cosine: bool = False) -> Tensor:
        """Final embeddings (n, d) of items outside the graph from their features ``features`` (n, F):
        alpha_0 x W (an isolated node propagates nothing), L2-normalised rows for a cosine-trained model."""
        if self.content is None:
            raise ValueError("this model has no content projection (train.content.features is empty)")
        weight = self.content.linear.weight
        items = self.content(features.to(device=weight.device, dtype=weight.dtype)) * self.lightgcn.alpha[0]
        return (F.normalize(items, dim=-1) if cosine else items).detach()
