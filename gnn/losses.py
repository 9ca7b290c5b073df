"""Training losses.

BPR (Rendle et al. 2009) as in LightGCN, for a batch of B triples (u, i+, j-):

    L = -1/B sum log sigmoid(<e_u, e_i> - <e_u, e_j>)
        + l2 * 1/(2B) * sum (||e0_u||^2 + ||e0_i||^2 + ||e0_j||^2)

where e are final (propagated) and e0 layer-0 embeddings.

Sampled softmax (InfoNCE) with M negatives shared by the batch, cosine scores and temperature tau:

    L = -1/B sum log( exp(c(u,i)/tau) / (exp(c(u,i)/tau) + sum_m exp(c(u,j_m)/tau)) ) + same L2 term

where c is cosine similarity. Shared negatives turn the M negative scores into one (B, d) x (d, M) matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def l2_penalty(*layer0: Tensor) -> Tensor:
    """sum of squared norms / (2B) over the given (B, d) layer-0 embedding batches."""
    batch = layer0[0].shape[0]
    return sum(e.pow(2).sum() for e in layer0) / (2 * batch)


def row_counts(num_rows: int, *rows: tuple[Tensor, int]) -> Tensor:
    """c (num_rows,) float32: how often each table row occurs among the given (indices, offset) groups, row
    ``offset + indices[k]`` for each k (users at offset 0, items at U in the one table of users and items). One
    ``bincount`` per group: no concatenated (M,) index list (72 MiB for a 3 * 10^7-event step)."""
    counts = torch.zeros(num_rows, dtype=torch.float32, device=rows[0][0].device if rows else None)
    for indices, offset in rows:
        part = torch.bincount(indices, minlength=num_rows - offset)
        counts[offset : offset + part.numel()] += part
    return counts


def counted_l2_penalty(table: Tensor, counts: Tensor, batch: int) -> Tensor:
    """The same value as `l2_penalty` of ``table[rows]`` split into batches of ``batch`` rows, without gathering:
    sum_r c_r ||table_r||^2 / (2 batch), with c_r the number of times row r occurs in the batch's rows
    (``counts`` (N,), `row_counts`). ``table`` (N, d).

    The gradient 2 c_r table_r / (2 batch) is one dense (N, d) product instead of an (M, d) gather and its
    scatter-add, which on a CPU is several times slower for M in the hundreds of thousands (a BPR batch touches 3
    rows per pair). A trainable leaf table can take that gradient without autograd: `add_counted_l2_gradient`.
    """
    return (counts.to(table.dtype) * table.pow(2).sum(-1)).sum() / (2 * batch)


@torch.no_grad()
def add_counted_l2_gradient(grad: Tensor, table: Tensor, counts: Tensor, scale: float) -> None:
    """grad += scale * c_r table_r for every row r, in place: the gradient of ``scale * batch`` times
    `counted_l2_penalty` (for weight l2, batch B and a rank's share f: scale = l2 f / B). ``grad`` and ``table``
    (N, d), ``counts`` (N,). No (N, d) temporary (autograd's penalty made two: the squares in the forward pass
    and its gradient before the sum into the table's), which matters when the step holds six such tables."""
    grad.addcmul_(counts.to(table.dtype).unsqueeze(1), table, value=scale)


def bpr_loss(user: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """Mean BPR loss; all arguments (B, d) final embeddings."""
    margin = (user * positive).sum(-1) - (user * negative).sum(-1)
    return F.softplus(-margin).mean()


# pairs per piece of `chunked_bpr_loss`: ~6 (pairs, d) float32 buffers, ~50 MiB at d = 64. Pieces this small stay in
# the caches: 2 * 10^6 triples on a 725k-row table took 1.13-1.19 s against 1.79-1.97 s with pieces of 131,072
BPR_CHUNK_PAIRS = 32_768


class _AccumulatedGradient(torch.autograd.Function):
    """A scalar whose gradients with respect to some tables were computed already: forward(value, T_1, G_1, T_2,
    G_2, ...), backward(g) = (g G_1, g G_2, ...) for T_1, T_2, ... (in place: each G is this node's alone)."""

    @staticmethod
    def forward(ctx, value: Tensor, *tables_and_grads: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(*tables_and_grads[1::2])
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        out: list[Tensor | None] = [None]
        for table_grad in ctx.saved_tensors:
            out += [table_grad.mul_(grad), None]
        return tuple(out)


class _BprPieceBuffers:
    """The (piece, d) rows and (piece,) int64 indices `chunked_bpr_loss` works in, made once per call and reused by
    every piece: the pieces of a 3 * 10^7-event step (~50 of 32,768 triples) then allocate nothing of their size,
    so a process that maps its large allocations (`homerank.engine.memory.large_allocations_mapped`, the train
    stage) does not fault ~25 MiB of fresh pages in per piece, and one that reuses its heap does not scatter them."""

    def __init__(self, pairs: int, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.table_rows = torch.empty((3, pairs, dim), dtype=dtype, device=device)
        self.index = torch.empty((3, pairs), dtype=torch.long, device=device)

    def indices(self, count: int, *pieces: Tensor) -> tuple[Tensor, ...]:
        """``pieces`` (count,) of any integer dtype, copied into the int64 index buffers."""
        return tuple(self.index[k, :count].copy_(piece) for k, piece in enumerate(pieces))

    def rows(self, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """Three (count, d) row buffers."""
        return self.table_rows[0, :count], self.table_rows[1, :count], self.table_rows[2, :count]


def chunked_bpr_loss(user_emb: Tensor, item_emb: Tensor, users: Tensor, positives: Tensor, negatives: Tensor,
                     chunk: int | None = None) -> Tensor:
    """`bpr_loss` of the B triples (users, positives, negatives) (each (B,) rows of the (U, d) ``user_emb`` and the
    (I, d) ``item_emb``), with memory bounded by ``chunk`` triples instead of B.

    The mean is a sum of pieces, L = (1/B) sum_t softplus(-m_t) with m_t = <e_u, e_i+ - e_j->, so its gradient is
    summed piece by piece, by hand: with c_t = -sigmoid(-m_t) / B,

        G_u += c_t (e_i+ - e_j-),   G_i+ += c_t e_u,   G_j- -= c_t e_u        (``index_add_`` into G)

    and the sums G_u (U, d) and G_i (I, d) are handed to the tables' own graph (the propagation) by the returned
    scalar's backward: the same value and gradients as `bpr_loss` on the whole batch, up to float summation order,
    with one (piece, d) gather per side at a time and no (N, d) buffer per piece (autograd's backward of each
    gather made one: at 3 * 10^7 events three 177 MiB tables per piece). ``item_emb`` may be ``user_emb`` itself
    (one (N, d) table of users and items, the rows given as table rows): one sum G (N, d) then, and the table's
    gradient reaches it without the (N, d) buffers two slices of it would need. With B <= ``chunk`` (default
    `BPR_CHUNK_PAIRS`; or no gradient wanted) it is `bpr_loss`."""
    chunk = BPR_CHUNK_PAIRS if chunk is None else chunk
    size = users.numel()
    if size <= chunk or not torch.is_grad_enabled() or not (user_emb.requires_grad or item_emb.requires_grad):
        return bpr_loss(user_emb.index_select(0, users), item_emb.index_select(0, positives),
                        item_emb.index_select(0, negatives))
    shared = item_emb is user_emb
    user_table, item_table = user_emb.detach(), item_emb.detach()
    user_grad = torch.zeros_like(user_table)
    item_grad = user_grad if shared else torch.zeros_like(item_table)
    total = torch.zeros((), dtype=user_emb.dtype, device=user_emb.device)
    pieces = _BprPieceBuffers(min(chunk, size), user_table.shape[1], user_table.dtype, user_table.device)
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        # int64 piece by piece: the batch may be int32 (half the memory), which index_select/index_add_ take slower
        piece_users, piece_positives, piece_negatives = pieces.indices(stop - start, users[start:stop],
                                                                       positives[start:stop], negatives[start:stop])
        user, difference, product = pieces.rows(stop - start)
        torch.index_select(user_table, 0, piece_users, out=user)
        torch.index_select(item_table, 0, piece_positives, out=difference)
        torch.index_select(item_table, 0, piece_negatives, out=product)
        difference.sub_(product)
        margin = torch.mul(user, difference, out=product).sum(-1)
        total += F.softplus(-margin).sum() / size
        coefficient = (-torch.sigmoid(-margin) / size).unsqueeze(1)
        user_grad.index_add_(0, piece_users, torch.mul(coefficient, difference, out=product))
        user.mul_(coefficient)
        item_grad.index_add_(0, piece_positives, user)
        item_grad.index_add_(0, piece_negatives, user, alpha=-1)
    if shared:
        return _AccumulatedGradient.apply(total, user_emb, user_grad)
    return _AccumulatedGradient.apply(total, user_emb, user_grad, item_emb, item_grad)


def sampled_softmax_loss(user: Tensor, positive: Tensor, negatives: Tensor, temperature: float,
                         user_of_pair: Tensor | None = None) -> Tensor:
    """Mean sampled-softmax loss over B positive pairs with M shared negatives.

    Args:
        user: (B_u, d) embeddings of the batch's distinct users (or (B, d), one row per pair, when
            ``user_of_pair`` is None). positive: (B, d). negatives: (M, d).
        user_of_pair: (B,) row of ``user`` for each pair. The negatives' log-sum-exp depends only on the
            user, so it is computed once per distinct user: a (B_u, M) product instead of (B, M).
    """
    user_n, pos_n, neg_n = (F.normalize(x, dim=-1) for x in (user, positive, negatives))
    negative_lse = torch.logsumexp(user_n @ neg_n.T / temperature, dim=1)  # (B_u,)
    if user_of_pair is not None:
        user_n, negative_lse = user_n[user_of_pair], negative_lse[user_of_pair]
    pos_logit = (user_n * pos_n).sum(-1) / temperature
    return (torch.logaddexp(pos_logit, negative_lse) - pos_logit).mean()
