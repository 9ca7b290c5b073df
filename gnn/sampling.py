"""Vectorised negative sampling that excludes each user's positives.

Positives are kept as sorted int64 keys ``u * I + i``; a candidate (u, j) is rejected when its key is
found by ``searchsorted``. Rejected candidates are redrawn together, round after round, so there is no
Python loop over users. Users who interacted with every item cannot get a negative: their last draw is
kept after ``max_rounds`` (it happens only on toy data).
"""

from __future__ import annotations

import torch
from torch import Tensor


def positive_keys(users: Tensor, items: Tensor, num_items: int) -> Tensor:
    """Sorted unique keys u * I + i, shape (P,)."""
    return torch.unique(users.long() * num_items + items.long())


def is_positive(users: Tensor, items: Tensor, keys: Tensor, num_items: int) -> Tensor:
    """Boolean mask: (users[k], items[k]) is a positive pair."""
    query = users.long() * num_items + items.long()
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    position = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[position] == query


def sample_negatives(
    users: Tensor,
    num_items: int,
    keys: Tensor,
    generator: torch.Generator | None = None,
    max_rounds: int = 100,
) -> Tensor:
    """One uniformly drawn non-positive item per entry of ``users`` (shape like ``users``)."""
    negatives = torch.randint(0, num_items, users.shape, generator=generator, device=users.device)
    todo = is_positive(users, negatives, keys, num_items).nonzero().flatten()
    for _ in range(max_rounds):
        if todo.numel() == 0:
            break
        redraw = torch.randint(0, num_items, todo.shape, generator=generator, device=users.device)
        negatives[todo] = redraw
        still = is_positive(users[todo], redraw, keys, num_items)
        todo = todo[still]
    return negatives
