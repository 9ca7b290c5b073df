"""Vectorised negative sampling that excludes each user's positives.

Positives are kept as sorted int64 keys ``u * I + i``; a candidate (u, j) is rejected when its key is
found by ``searchsorted``. Rejected candidates are redrawn together, round after round, so there is no
Python loop over users. Entries still rejected after ``max_rounds`` belong to users who interacted with
almost every item; they draw uniformly from their explicit complement instead (a loop over those few users
only). Users who interacted with every item have no negative: their last draw is kept (toy data only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from homerank.gnn.keys import is_member


def is_positive(users: Tensor, items: Tensor, keys: Tensor, num_items: int) -> Tensor:
    """Boolean mask: (users[k], items[k]) is a positive pair (``keys`` from `gnn.keys.pair_keys`)."""
    return is_member(keys, users.long() * num_items + items.long())


def sample_negatives(
    users: Tensor,
    num_items: int,
    keys: Tensor,
    generator: torch.Generator | None = None,
    max_rounds: int = 100,
) -> Tensor:
    """One uniformly drawn non-positive item per entry of ``users`` (shape and integer dtype like ``users``)."""
    negatives = torch.randint(0, num_items, users.shape, generator=generator, device=users.device, dtype=users.dtype)
    todo = is_positive(users, negatives, keys, num_items).nonzero().flatten()
    for _ in range(max_rounds):
        if todo.numel() == 0:
            break
        redraw = torch.randint(0, num_items, todo.shape, generator=generator, device=users.device, dtype=users.dtype)
        negatives[todo] = redraw
        still = is_positive(users[todo], redraw, keys, num_items)
        todo = todo[still]
    if todo.numel():
        _draw_from_complement(negatives, users, todo, num_items, keys, generator)
    return negatives


def _draw_from_complement(negatives: Tensor, users: Tensor, todo: Tensor, num_items: int, keys: Tensor,
                          generator: torch.Generator | None) -> None:
    """Fill ``negatives[todo]`` uniformly from each user's non-positive items, in place."""
    for user in torch.unique(users[todo]).tolist():
        start, end = torch.searchsorted(keys, torch.tensor([user * num_items, (user + 1) * num_items],
                                                           device=keys.device)).tolist()
        allowed = torch.ones(num_items, dtype=torch.bool, device=keys.device)
        allowed[keys[start:end] - user * num_items] = False
        complement = allowed.nonzero().flatten()
        if complement.numel() == 0:
            continue
        entries = todo[users[todo] == user]
        pick = torch.randint(0, complement.numel(), entries.shape, generator=generator, device=keys.device)
        negatives[entries] = complement[pick]
