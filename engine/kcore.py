"""Iterated k-core filter on the bipartite interaction graph.

Repeatedly drop users with fewer than ``min_user`` distinct items and items with fewer than ``min_item``
distinct users until nothing changes; the result is the largest subgraph where every user has degree
>= min_user and every item degree >= min_item (it may be empty).
"""

from __future__ import annotations

import logging
from typing import Any

from homerank.engine import schema

log = logging.getLogger(__name__)


def kcore_filter(edges: Any, min_user: int, min_item: int, max_rounds: int = 1000) -> tuple[Any, int]:
    """Return (filtered edges, rounds needed). ``edges`` has one row per distinct (user_id, item_id)."""
    current = edges
    for round_ in range(1, max_rounds + 1):
        user_degree = current[schema.USER].value_counts()
        item_degree = current[schema.ITEM].value_counts()
        keep_users = user_degree.index[user_degree >= min_user]
        keep_items = item_degree.index[item_degree >= min_item]
        mask = current[schema.USER].isin(keep_users) & current[schema.ITEM].isin(keep_items)
        if bool(mask.all()):
            return current.reset_index(drop=True), round_
        current = current[mask]
        log.debug("k-core round %d: %d edges left", round_, len(current))
    return current.reset_index(drop=True), max_rounds
