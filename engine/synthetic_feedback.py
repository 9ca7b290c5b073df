"""Simulated shoppers reacting to a served homepage, with the tastes of the synthetic log's latent model.

The run's ``impressions/`` say what each user was shown (section, row = the section's place on the page, slot =
the item's place in the row). Shopper u examines the impression at (row r, slot k) with probability

    exam(r, k) = row_decay^(r - 1) · k^(-slot_decay)                      (position bias: top rows, first slots)

and clicks an examined item i with probability

    attract(u, i) = click_floor + (click_max - click_floor) · rho(u, i) / max_j rho(u, j),
    rho(u, i) = (1 - explore) · c_u[cat(i)] · s_u[seg(i)] + explore · g[cat(i)] / segments,

the chance that one of u's views in the generator lands in i's (category, segment) cell (`synthetic_model`: c_u and
s_u are u's Dirichlet category and segment tastes, g the categories' popularity shares, ``explore`` the share of
exploring sessions). So P(click) = exam · attract, and a click goes on through the generator's funnel: cart with
``p_cart``, then purchase with ``p_purchase``. Each user's reactions fall in one visit that starts uniformly within
``visit_hours`` after the impression's ``served_at``; events follow the page order (row, then slot) seconds apart,
the cart 40 s and the purchase 120 s after the click, as in the generator.

Every draw comes from ``default_rng([seed, 6, p])`` for the impressions' part p, so the same run and seed give the
same log. The rows have the columns the generator writes (user_id, item_id, event_type, timestamp, session_id,
value, and query when the log has searches), so the ETL reads them together with the log, plus the impression's
``section``, ``row``, ``slot`` and ``run_id``, which tie each event to what was shown (`homerank.engine.feedback`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from homerank.engine.errors import HomerankError
from homerank.engine.synthetic_model import (
    ITEM_ID_OFFSET,
    USER_BLOCK,
    USER_ID_OFFSET,
    SyntheticSpec,
    World,
    user_tastes,
)

FEEDBACK_STREAM = 6  # the generator's streams 0-5 are taken (synthetic_model)
SESSION_OFFSET = 10**12  # a user's visit is session SESSION_OFFSET + user number: apart from the log's session ids
CART_DELAY_S, PURCHASE_DELAY_S = 40, 120
EVENT_COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "session_id", "value"]
IMPRESSION_COLUMNS = ["section", "row", "slot", "run_id"]


@dataclass(frozen=True)
class Shoppers:
    """How simulated shoppers react to a page (see the module docstring for the formulas)."""

    click_max: float = 0.5  # P(click | examined) for an item of the user's favourite cell
    click_floor: float = 0.01  # P(click | examined) for an item the user has no taste for
    slot_decay: float = 0.7  # examination of slot k falls as k^-slot_decay
    row_decay: float = 0.8  # and of row r as row_decay^(r - 1)
    visit_hours: float = 48.0  # a user's visit starts within this many hours after served_at

    def check(self) -> None:
        if not 0 <= self.click_floor <= self.click_max <= 1:
            raise HomerankError(f"simulate-feedback: need 0 <= click_floor <= click_max <= 1 (got {self.click_floor}, "
                                f"{self.click_max})")
        if self.slot_decay < 0 or not 0 < self.row_decay <= 1 or self.visit_hours <= 0:
            raise HomerankError("simulate-feedback: slot_decay >= 0, 0 < row_decay <= 1 and visit_hours > 0")


def examination(row: np.ndarray, slot: np.ndarray, shoppers: Shoppers) -> np.ndarray:
    """exam(r, k) = row_decay^(r - 1) · k^(-slot_decay), (n,) float64 for 1-based rows and slots."""
    return shoppers.row_decay ** (row.astype(np.float64) - 1) * slot.astype(np.float64) ** -shoppers.slot_decay


def relevance(spec: SyntheticSpec, world: World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """rho(u, i) / max_j rho(u, j) in [0, 1], (n,) float64, for user numbers ``users`` (0..spec.users-1) and item
    numbers ``items`` (0..spec.items-1), pair by pair: the relevance behind ``attract``."""
    n_cat, n_seg = world.categories, spec.segments
    distinct, inverse = np.unique(users, return_inverse=True)
    category_taste = np.zeros((distinct.size, n_cat))
    segment_taste = np.zeros((distinct.size, n_seg))
    for block in np.unique(distinct // USER_BLOCK):  # tastes come in blocks of USER_BLOCK users (stream 3)
        first, last = int(block) * USER_BLOCK, min((int(block) + 1) * USER_BLOCK, spec.users)
        category_cdf, segment_cdf = user_tastes(spec, n_cat, first, last)
        mine = (distinct >= first) & (distinct < last)
        rows = distinct[mine] - first
        category_taste[mine] = np.diff(category_cdf[rows], axis=1, prepend=0.0)
        segment_taste[mine] = np.diff(segment_cdf[rows], axis=1, prepend=0.0)
    explored = spec.explore * world.global_category_share / n_seg  # (C,)
    cells = (1 - spec.explore) * category_taste[:, :, None] * segment_taste[:, None, :] + explored[None, :, None]
    best = cells.reshape(distinct.size, -1).max(axis=1)  # (users,) max_j rho(u, j)
    category, segment = world.item_cell[items] // n_seg, world.item_cell[items] % n_seg
    return cells[inverse, category, segment] / best[inverse]


def react(impressions: pd.DataFrame, spec: SyntheticSpec, world: World, prices: np.ndarray, part: int, seed: int,
          shoppers: Shoppers) -> pd.DataFrame:
    """The feedback events of one part of ``impressions`` (user_id, item_id, section, row, slot, run_id,
    served_at), drawn from ``default_rng([seed, FEEDBACK_STREAM, part])``; ``prices`` (I,) the catalogue's price by
    item number (a purchase's value). Rows in (user, time) order."""
    rng = np.random.default_rng([seed, FEEDBACK_STREAM, part])
    users = impressions["user_id"].to_numpy(dtype=np.int64) - USER_ID_OFFSET
    items = impressions["item_id"].to_numpy(dtype=np.int64) - ITEM_ID_OFFSET
    for name, numbers, size, offset in (("user_id", users, spec.users, USER_ID_OFFSET),
                                        ("item_id", items, spec.items, ITEM_ID_OFFSET)):
        outside = (numbers < 0) | (numbers >= size)
        if outside.any():
            raise HomerankError(f"simulate-feedback: impressions {name} {int(numbers[outside][0]) + offset} is not in "
                                "the generated log the catalogue was made with (pseudonymised ids, or another log?)")
    row, slot = impressions["row"].to_numpy(), impressions["slot"].to_numpy()
    p_click = examination(row, slot, shoppers) * (
        shoppers.click_floor + (shoppers.click_max - shoppers.click_floor) * relevance(spec, world, users, items))
    clicked = rng.random(users.size) < p_click
    carted = clicked & (rng.random(users.size) < spec.p_cart)
    bought = carted & (rng.random(users.size) < spec.p_purchase)
    distinct, inverse = np.unique(users, return_inverse=True)
    visit = rng.random(distinct.size) * shoppers.visit_hours * 3600  # (users,) seconds after served_at
    jitter = rng.integers(0, 10, users.size)
    seconds = visit[inverse] + 120 * (row - 1) + 10 * (slot - 1) + jitter  # page order, then a few seconds
    served = impressions["served_at"].to_numpy().astype("datetime64[ns]")
    frames = []
    for kind, mask, delay in (("click", clicked, 0), ("cart", carted, CART_DELAY_S),
                              ("purchase", bought, PURCHASE_DELAY_S)):
        at = np.flatnonzero(mask)
        frames.append(pd.DataFrame({
            "user_id": impressions["user_id"].to_numpy()[at],
            "item_id": impressions["item_id"].to_numpy()[at],
            "event_type": np.full(at.size, kind, dtype=object),
            "timestamp": served[at] + ((seconds[at] + delay) * 1e9).astype("timedelta64[ns]"),
            "session_id": SESSION_OFFSET + users[at],
            "value": prices[items[at]] if kind == "purchase" else np.full(at.size, np.nan),
            **{column: impressions[column].to_numpy()[at] for column in IMPRESSION_COLUMNS},
        }))
    events = pd.concat(frames, ignore_index=True)
    events = events.sort_values(["user_id", "timestamp"], kind="stable", ignore_index=True)
    events["event_type"] = events["event_type"].astype("string")
    events["section"] = events["section"].astype("string")
    events["run_id"] = events["run_id"].astype("string")
    events[["row", "slot", "session_id"]] = events[["row", "slot", "session_id"]].astype("int64")
    if spec.search_share > 0:  # the log has a query column: every input file must have it (engine.ingest)
        events.insert(len(EVENT_COLUMNS), "query", pd.array([None] * len(events), dtype="string"))
    return events
