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


def counted_l2_penalty(table: Tensor, rows: Tensor, batch: int) -> Tensor:
    """The same value as `l2_penalty` of ``table[rows]`` split into batches of ``batch`` rows, without gathering:
    sum_r c_r ||table_r||^2 / (2 batch), with c_r the number of times row r occurs in ``rows`` (N,).

    ``table`` (N, d); ``rows`` (M,) row indices. The gradient 2 c_r table_r / (2 batch) is one dense (N, d)
    product instead of an (M, d) gather and its scatter-add, which on a CPU is several times slower for
    M in the hundreds of thousands (a BPR batch touches 3 rows per pair).
    """
    counts = torch.bincount(rows, minlength=table.shape[0]).to(table.dtype)
    return (counts * table.pow(2).sum(-1)).sum() / (2 * batch)


def bpr_loss(user: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """Mean BPR loss; all arguments (B, d) final embeddings."""
    margin = (user * positive).sum(-1) - (user * negative).sum(-1)
    return F.softplus(-margin).mean()


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
