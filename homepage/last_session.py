"""Continue where you left off: the items of each user's last session that were viewed, clicked or carted but not
bought there, most recent first (the ETL's ``etl/last_session/``, `homerank.engine.sessions`), as catalogue
positions by user for whole blocks of users. Items bought at any time are left out by the page rules, like in every
row but buy_again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.homepage.catalogue import Catalogue
from homerank.homepage.ragged import Ragged

SESSION_REASON = "continue_shopping:last_session"
CART = "cart"


@dataclass
class LastSession:
    """``items``: users (K,) -> catalogue positions, most recent first; ``carted`` (V,) whether the user put the
    entry's item in the cart in that session (aligned with ``items.values``); ``session_start`` (K,)
    datetime64[ns], when each user's last session began."""

    items: Ragged
    carted: np.ndarray
    session_start: np.ndarray

    def lists(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For a block of ``users`` (B,): the lists of those with a last session, (G, L) positions padded with -1,
        and each block row's line of them (B,), -1 for users without one."""
        rows = self.items.rows(users)
        has = rows >= 0
        group = np.full(len(users), -1, dtype=np.int64)
        group[has] = np.arange(int(has.sum()))
        return self.items.padded(rows[has]), group

    def started(self, users: np.ndarray) -> np.ndarray:
        """Each user's last-session start (B,) datetime64[ns], NaT for users without one."""
        rows = self.items.rows(users)
        out = np.full(len(users), np.datetime64("NaT", "ns"), dtype="datetime64[ns]")
        out[rows >= 0] = self.session_start[rows[rows >= 0]]
        return out

    def was_carted(self, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """For slots (user (n,), position (n,)): True where the item was in the user's cart in the last session."""
        rows = self.items.rows(users)
        out = np.zeros(len(users), dtype=bool)
        has = np.flatnonzero(rows >= 0)
        if not has.size:
            return out
        lists = self.items.padded(rows[has])
        hit = lists == positions[has][:, None]
        column = np.argmax(hit, axis=1)
        found = hit[np.arange(has.size), column]
        entry = self.items.start[rows[has]] + column
        out[has[found]] = self.carted[entry[found]]
        return out


def last_session(table: pd.DataFrame | None, catalogue: Catalogue) -> LastSession | None:
    """The `LastSession` of the ETL's last-session table (user_id, item_id, last_ts, event_type, session_start; any
    order), for the items the catalogue has; None without a table or rows."""
    if table is None or not len(table):
        return None
    # array by array (no copy of the table, no frame-wide sort): the sort keys of the rows of catalogue items, then
    # one permutation applied to the four columns kept (the table is 1.9M rows at 3 * 10^7 events, read while every
    # interaction is held: the stage's peak)
    positions = pd.Index(catalogue.item_ids).get_indexer(table[schema.ITEM])
    known = np.flatnonzero(positions >= 0)
    if not known.size:
        return None
    user_order = pd.factorize(table[schema.USER].to_numpy()[known], sort=True)[0]  # codes in the ids' order
    newest_first = table[schema.LAST_TS].to_numpy().astype("datetime64[ns]")[known].view(np.int64)
    newest_first = np.where(newest_first == np.iinfo(np.int64).min, np.iinfo(np.int64).max, -newest_first)  # NaT last
    order = known[np.lexsort((positions[known], newest_first, user_order))]  # by user, newest first, then position
    del user_order, newest_first
    items = Ragged.of(table[schema.USER].to_numpy()[order], positions[order].astype(np.int64))
    carted = (table[schema.EVENT] == CART).to_numpy(dtype=bool, na_value=False)[order]
    starts = table["session_start"].to_numpy().astype("datetime64[ns]")[order][items.start]
    return LastSession(items, carted, starts)
