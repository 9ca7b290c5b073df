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
    """Return (filtered edges, rounds). ``edges`` has one row per distinct (user_id, item_id).

    Round r checks the current graph (the input first): every user with at least ``min_user`` items and every
    item with at least ``min_item`` users ends it. Otherwise the next graph keeps, of the input's edges, those to
    the items meeting ``min_item`` in the current graph, of the users keeping at least ``min_user`` of them (the
    rounds of `homerank.engine.partitioned.kcore_by_user`, which reads the input once per round)."""
    current = edges
    for round_ in range(1, max_rounds + 1):
        user_degree = current[schema.USER].value_counts()
        item_degree = current[schema.ITEM].value_counts()
        if bool((user_degree >= min_user).all()) and bool((item_degree >= min_item).all()):
            return current.reset_index(drop=True), round_
        to_items = edges[edges[schema.ITEM].isin(item_degree.index[item_degree >= min_item])]
        user_degree = to_items[schema.USER].value_counts()
        current = to_items[to_items[schema.USER].isin(user_degree.index[user_degree >= min_user])]
        log.debug("k-core round %d: %d edges left", round_, len(current))
    return current.reset_index(drop=True), max_rounds
