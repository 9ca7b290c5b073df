"""(user, item) pairs as sorted int64 keys ``u * I + i`` and the membership test by binary search, shared by
negative sampling and the hit test of the evaluation: no Python loop over users, no dense U x I mask."""

from __future__ import annotations

import torch
from torch import Tensor


def pair_keys(users: Tensor, items: Tensor, num_items: int) -> Tensor:
    """Sorted unique keys u * I + i, shape (P,)."""
    return torch.unique(users.long() * num_items + items.long())


def is_member(sorted_keys: Tensor, query: Tensor) -> Tensor:
    """Boolean tensor shaped like ``query``: query[k] occurs in ``sorted_keys`` (sorted ascending)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    flat = query.reshape(-1)
    position = torch.searchsorted(sorted_keys, flat).clamp_(max=sorted_keys.numel() - 1)
    return (sorted_keys[position] == flat).view_as(query)
