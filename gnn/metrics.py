"""Full-ranking evaluation: every item is scored for every user, the user's training items are masked,
and the top-K list is compared with the user's held-out items T_u. For K in ks, averaged over users with
|T_u| > 0 (LightGCN protocol):

    Recall@K    = hits@K / |T_u|
    Precision@K = hits@K / K
    HitRate@K   = 1[hits@K > 0]
    NDCG@K      = sum_{r <= K, item_r in T_u} 1/log2(r + 1)  /  sum_{r <= min(|T_u|, K)} 1/log2(r + 1)

Scores come in blocks of users (one (B, I) matrix product per block, then ``torch.topk``); masks are
CSR index lists turned into (row, col) pairs, so nothing loops over users in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from homerank.engine.matrices import csr_from_pairs
from homerank.gnn.keys import is_member
from homerank.gnn.scorer import ScoreFn, mix_standardised, standardise


@dataclass
class CSRIndex:
    """Per-user item lists as CSR arrays (torch): items of user u are indices[indptr[u]:indptr[u+1]]; ``indptr``
    int64, ``indices`` int32 when the items fit (half the memory: the training pairs' lists are 12.5M long at
    3 * 10^7 events), and `pairs` hands out int64 items."""

    indptr: Tensor
    indices: Tensor
    num_items: int

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> CSRIndex:
        matrix = csr_from_pairs(np.asarray(users), np.asarray(items), num_users, num_items)
        return cls(torch.from_numpy(matrix.indptr.astype(np.int64)),
                   torch.from_numpy(matrix.indices.astype(np.int32 if num_items < 2**31 else np.int64)), num_items)

    @classmethod
    def from_keys(cls, keys: Tensor, num_users: int, num_items: int) -> CSRIndex:
        """The lists of the pairs behind sorted unique keys u * I + i (`homerank.gnn.keys.pair_keys`), (P,) int64."""
        bounds = torch.arange(num_users + 1, dtype=torch.int64, device=keys.device) * num_items
        indices = torch.remainder(keys, num_items)
        return cls(torch.searchsorted(keys, bounds),
                   indices.to(torch.int32) if num_items < 2**31 else indices, num_items)

    def counts(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def pairs(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(row position in ``users``, item) for every listed item of the given users."""
        start, end = self.indptr[users], self.indptr[users + 1]
        lengths = end - start
        rows = torch.repeat_interleave(torch.arange(users.numel()), lengths)
        offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths,
                                                                             lengths)
        return rows, self.indices[torch.repeat_interleave(start, lengths) + offsets].long()

    def restrict(self, users: Tensor) -> CSRIndex:
        """The same lists for ``users`` only; every other user gets an empty list."""
        rows, items = self.pairs(users)
        return CSRIndex.from_pairs(users[rows].numpy(), items.numpy(), self.indptr.numel() - 1, self.num_items)

    def sample_users(self, n: int | None, seed: int) -> CSRIndex:
        """The lists of a seeded random sample of ``n`` of the users with a non-empty list (every other user's list
        empty), or ``self`` when ``n`` is None or there are not more than ``n`` such users. The same seed and lists
        give the same sample, so metrics of different epochs or candidates compare the same users."""
        with_items = torch.nonzero(self.counts() > 0).flatten()
        if n is None or with_items.numel() <= n:
            return self
        generator = torch.Generator().manual_seed(seed)
        return self.restrict(with_items[torch.randperm(with_items.numel(), generator=generator)[:n]].sort().values)

    def keys(self) -> Tensor:
        """Sorted keys u * I + i of all pairs."""
        users = torch.repeat_interleave(torch.arange(self.indptr.numel() - 1), self.counts())
        return users * self.num_items + self.indices


def top_k(
    score_fn: ScoreFn, users: Tensor, k: int, exclude: CSRIndex | None, batch_size: int = 2048,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Top-k items and scores for each user, shapes (len(users), k); excluded items never appear
    (unless a user has fewer than k allowed items, in which case -inf scores fill the tail)."""
    items_out, scores_out = [], []
    for start in range(0, users.numel(), batch_size):
        batch = users[start : start + batch_size]
        scores = score_fn(batch.to(device)).float()
        if exclude is not None:
            rows, cols = exclude.pairs(batch.cpu())
            scores[rows.to(device), cols.to(device)] = -torch.inf
        kk = min(k, scores.shape[1])
        values, indices = torch.topk(scores, kk, dim=1)
        items_out.append(indices.cpu())
        scores_out.append(values.cpu())
    if not items_out:
        return torch.empty(0, k, dtype=torch.long), torch.empty(0, k)
    return torch.cat(items_out), torch.cat(scores_out)


def popularity_top_k(popularity: Tensor, users: Tensor, k: int, exclude: CSRIndex | None,
                     batch_size: int = 2048) -> tuple[Tensor, Tensor]:
    """`top_k` of the scorer that gives every user the same scores ``popularity`` (I,), without scoring (B, I).

    The global order o = items by popularity descending (ties: lower item index first) is the same for every user;
    user u's top-k is the first k entries of o that are not in E_u (their excluded items). With p(i) the position
    of item i in o, only the first M = k + max_u |E_u| positions of a block can matter: mark p(i) for every excluded
    pair with p(i) < M, and keep the first k unmarked positions of each row (a stable sort of the (B, M) marks).
    Cost O(B M + pairs) per block instead of O(B I) scores and a top-k over them. Returns (len(users), k) items and
    scores like `top_k`: a user with fewer than k allowed items gets their excluded items last, with -inf scores.
    """
    num_items = popularity.numel()
    kk = min(k, num_items)
    scores_cpu = popularity.float().cpu()
    order = torch.sort(scores_cpu, descending=True, stable=True).indices  # ties: lower index first
    position = torch.empty_like(order)
    position[order] = torch.arange(num_items)
    ordered_scores = scores_cpu[order]
    counts = exclude.counts() if exclude is not None else None
    items_out, scores_out = [], []

    def block(batch: Tensor) -> None:
        if exclude is None or counts is None:
            items_out.append(order[:kk].expand(batch.numel(), kk).clone())
            scores_out.append(ordered_scores[:kk].expand(batch.numel(), kk).clone())
            return
        width = min(num_items, kk + int(counts[batch].max()))
        rows, cols = exclude.pairs(batch)
        pos = position[cols]
        near = pos < width
        blocked = torch.zeros(batch.numel(), width, dtype=torch.uint8)
        blocked[rows[near], pos[near]] = 1
        first = torch.sort(blocked, dim=1, stable=True).indices[:, :kk]  # allowed positions first, in order
        scores = ordered_scores[first]
        scores[blocked.gather(1, first).bool()] = -torch.inf
        items_out.append(order[first])
        scores_out.append(scores)

    users = users.cpu()
    for start in range(0, users.numel(), batch_size):
        batch = users[start : start + batch_size]
        width = kk + (int(counts[batch].max()) if counts is not None else 0)
        rows_per_block = max(1, MAX_BLOCK_CELLS // width)  # a heavy user's block is cut, not a huge (B, M) matrix
        for sub in range(0, batch.numel(), rows_per_block):
            block(batch[sub : sub + rows_per_block])
    if not items_out:
        return torch.empty(0, k, dtype=torch.long), torch.empty(0, k)
    return torch.cat(items_out), torch.cat(scores_out)


MAX_BLOCK_CELLS = 1 << 24  # (rows x positions) per block of `popularity_top_k`


def hits_matrix(users: Tensor, ranked: Tensor, truth: CSRIndex) -> Tensor:
    """hits[b, r] = ranked[b, r] is in T_{users[b]}; shape like ``ranked``."""
    return is_member(truth.keys(), users.view(-1, 1) * truth.num_items + ranked)


def metrics_per_user(hits: Tensor, n_truth: Tensor, ks: list[int]) -> dict[str, Tensor]:
    """Recall/NDCG/Precision/HitRate@K of every row with n_truth > 0 (see module formulas): name -> (n,) float32."""
    valid = n_truth > 0
    hits = hits[valid].float()
    n_truth = n_truth[valid].float()
    out: dict[str, Tensor] = {}
    discount = 1.0 / torch.log2(torch.arange(hits.shape[1], dtype=torch.float32) + 2.0)
    ideal_cumulative = torch.cumsum(discount, 0)
    for k in ks:
        top = hits[:, :k]
        n_hits = top.sum(1)
        dcg = (top * discount[: top.shape[1]]).sum(1)
        ideal_len = torch.clamp(n_truth, max=min(k, hits.shape[1])).long()
        idcg = ideal_cumulative[ideal_len - 1]
        out[f"recall@{k}"] = n_hits / n_truth
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"precision@{k}"] = n_hits / k
        out[f"hitrate@{k}"] = (n_hits > 0).float()
    return out


def metrics_from_hits(hits: Tensor, n_truth: Tensor, ks: list[int]) -> dict[str, float]:
    """Average Recall/NDCG/Precision/HitRate@K over rows with n_truth > 0 (see module formulas)."""
    if not bool((n_truth > 0).any()):
        return {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "precision", "hitrate")}
    return {name: float(values.mean()) for name, values in metrics_per_user(hits, n_truth, ks).items()}


def sample_standard_errors(hits: Tensor, n_truth: Tensor, ks: list[int], population: int) -> dict[str, float]:
    """The standard error of each mean of `metrics_from_hits` when its n rows (n_truth > 0) are a uniform random
    sample, without replacement, of ``population`` users: s / sqrt(n) * sqrt((N - n) / (N - 1)), s the rows'
    standard deviation (ddof 1). Zero when the rows are the whole population (n = N: no sampling error)."""
    per_user = metrics_per_user(hits, n_truth, ks)
    n = int((n_truth > 0).sum())
    if n < 2 or n >= population:
        return dict.fromkeys(per_user, 0.0)
    correction = ((population - n) / (population - 1)) ** 0.5
    return {name: float(values.double().std() / n**0.5 * correction) for name, values in per_user.items()}


SCORE_BLOCK_BYTES = 256 * 2**20  # the largest (B, I) float32 block of scores a CPU process scores at once


def users_per_block(batch_size: int, num_items: int, device: torch.device | str = "cpu") -> int:
    """Users per (B, I) block of scores: ``batch_size``, fewer on the CPU when the block would pass
    `SCORE_BLOCK_BYTES` (at least 64 users). Memory then stays flat as the catalogue grows (2,048 users x 150,000
    items would be 1.2 GB per block, and the top-k needs a copy); the products are still large enough to run at full
    speed. GPUs keep ``batch_size``: their memory is sized for it and larger blocks keep them busy."""
    if torch.device(device).type == "cuda" or num_items <= 0:
        return batch_size
    return max(1, min(batch_size, max(64, SCORE_BLOCK_BYTES // (4 * num_items))))


# (users (n,), k, exclusions) -> the users' top-k items and scores (n, k), as `top_k` gives them
Ranker = Callable[[Tensor, int, CSRIndex | None], tuple[Tensor, Tensor]]


RANK_CHUNK_USERS = 1 << 16  # users ranked and hit-tested at a time by `evaluate_ranking`


def evaluate_ranking(
    score_fn: ScoreFn, truth: CSRIndex, exclude: CSRIndex | None, ks: list[int], batch_size: int = 2048,
    device: torch.device | str = "cpu", ranker: Ranker | None = None, chunk_users: int = RANK_CHUNK_USERS,
) -> dict[str, float]:
    """Full-ranking metrics over all users that have held-out items in ``truth``, scored in blocks of
    `users_per_block` users; ``ranker``, when given, finds the same top-k without the blocks (e.g.
    `homerank.gnn.dot_top_k.DotTopK` for a dot-product scorer). Users are ranked ``chunk_users`` at a time and only
    their (n, K) hits (bool) are kept: the ranked ids, scores and membership keys of every user at once were ~1.1 GB
    at 578,218 test users and K = 50."""
    return metrics_from_hits(*ranking_hits(score_fn, truth, exclude, ks, batch_size, device, ranker, chunk_users),
                             ks)


def ranking_hits(
    score_fn: ScoreFn, truth: CSRIndex, exclude: CSRIndex | None, ks: list[int], batch_size: int = 2048,
    device: torch.device | str = "cpu", ranker: Ranker | None = None, chunk_users: int = RANK_CHUNK_USERS,
) -> tuple[Tensor, Tensor]:
    """What `evaluate_ranking` averages: (hits (n, max K) bool, |T_u| (n,)) of the n users with held-out items in
    ``truth`` (for `metrics_from_hits` and `sample_standard_errors`)."""
    n_truth = truth.counts()
    users = torch.nonzero(n_truth > 0).flatten()
    if ranker is not None:
        hits = chunked_hits(users, truth, lambda chunk: ranker(chunk, max(ks), exclude)[0], chunk_users)
    else:
        batch_size = users_per_block(batch_size, truth.num_items, device)
        hits = chunked_hits(users, truth, lambda chunk: top_k(score_fn, chunk, max(ks), exclude, batch_size,
                                                              device)[0], chunk_users)
    return hits, n_truth[users]


def chunked_hits(users: Tensor, truth: CSRIndex, rank: Callable[[Tensor], Tensor],
                 chunk_users: int = RANK_CHUNK_USERS) -> Tensor:
    """`hits_matrix` (n, K) bool of ``users`` (n,), ranked ``chunk_users`` at a time by ``rank(chunk)`` -> (len(chunk),
    K) item indices: only the bools outlive a chunk, not its ids, scores and membership keys (int64, ~40 bytes a cell
    together)."""
    chunks = [users[start : start + chunk_users] for start in range(0, max(users.numel(), 1), chunk_users)]
    return torch.cat([hits_matrix(chunk, rank(chunk), truth) for chunk in chunks])


def evaluate_popularity(popularity: Tensor, truth: CSRIndex, exclude: CSRIndex | None, ks: list[int],
                        batch_size: int = 2048, chunk_users: int = RANK_CHUNK_USERS) -> dict[str, float]:
    """`evaluate_ranking` of the popularity scorer (every user the same scores ``popularity`` (I,)) through
    `popularity_top_k`: the same metrics (ties in popularity go to the lower item index), without the (U, I)
    scores; users ranked ``chunk_users`` at a time (`chunked_hits`)."""
    n_truth = truth.counts()
    users = torch.nonzero(n_truth > 0).flatten()
    hits = chunked_hits(users, truth, lambda chunk: popularity_top_k(popularity, chunk, max(ks), exclude,
                                                                      batch_size)[0], chunk_users)
    return metrics_from_hits(hits, n_truth[users], ks)


Blend = float | tuple[float, float]  # a share w of the second scorer, or (w, p) with a prior's weight p


def evaluate_blends(
    first: ScoreFn, second: ScoreFn, weights: Sequence[Blend], truth: CSRIndex, exclude: CSRIndex | None,
    ks: list[int], batch_size: int = 2048, device: torch.device | str = "cpu",
    prior: Tensor | None = None,
) -> dict[Blend, dict[str, float]]:
    """Metrics of every candidate blend, scoring each block of users once.

    A candidate w scores (1 - w) * z(first) + w * z(second) with per-row z-scores (see `standardise`); a
    candidate (w, p) adds p * prior, a (1, I) row such as `popularity_prior`. Results are keyed by candidate.
    """
    n_truth = truth.counts()
    users = torch.nonzero(n_truth > 0).flatten()
    ranked: dict[Blend, list[Tensor]] = {w: [] for w in weights}
    k = max(ks)
    for start in range(0, users.numel(), batch_size):
        batch = users[start : start + batch_size]
        a, b = first(batch.to(device)).float(), second(batch.to(device)).float()
        a, b = standardise(a), standardise(b)
        rows, cols = exclude.pairs(batch.cpu()) if exclude is not None else (None, None)
        if rows is not None:  # one host-to-device copy per block, not one per candidate
            rows, cols = rows.to(device), cols.to(device)
        for candidate in weights:
            share, prior_weight = candidate if isinstance(candidate, tuple) else (candidate, 0.0)
            scores = mix_standardised(a, b, share, prior, prior_weight)
            if rows is not None:
                scores[rows, cols] = -torch.inf
            ranked[candidate].append(torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.cpu())
    return {w: metrics_from_hits(hits_matrix(users, torch.cat(r), truth), n_truth[users], ks)
            for w, r in ranked.items()}
