"""Vectorised row filling for a block of B users: the same rows as `homepage.rows.PageBuilder.fill`, user by user,
but every step an array operation over the block.

For one section, each user's candidate sources are read as one virtual list (the sources concatenated in order, as
the builder walks them) and only a window of its first ``w`` entries is materialised, shape (B, w). Over that window:

    allowed(u, j)  = in_stock[p] and p not on u's page yet and (row may show purchases or p not bought by u)
                     and p not offered earlier in the list (first occurrence only)
    capped(u, j)   = #{j' < j : allowed, same category as j} >= max_per_category      (category_cap rows)
    pool(u)        = the first ``pool_size`` entries allowed and not capped, in list order

A row that pooled fewer than ``pool_size`` items while its list is longer than the window is redone with a window
four times wider, so the result equals the builder's walk over the whole list. Rows under ``diversity: mmr`` then
pick ``room`` items from their pool slot by slot, all users of the block at once (`mmr_pick`). Merchandising
(boosts, pins) is not handled here: `homepage.build` uses the builder for blocks when a merchandising file is active.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIRST_WINDOW = 1  # the first window is this many times the pool size (at least MIN_WINDOW)
MIN_WINDOW = 16
WIDEN = 4


@dataclass
class Source:
    """Candidate lists shared by groups of users: ``positions``/``scores`` (G, L), padded with -1 at the end of
    each list; ``reasons`` reason codes, one for all (a 0-d array), one per group (G,) or one per entry (G, L);
    ``group`` (B,) the list each block row reads (-1: the row has no such source); ``row_reasons`` (B,), when
    given, one reason code per block row instead."""

    positions: np.ndarray
    scores: np.ndarray
    reasons: np.ndarray
    group: np.ndarray
    row_reasons: np.ndarray | None = None

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """List length of each of ``rows`` (n,) (0 where the row has no such source)."""
        group = self.group[rows]
        out = np.zeros(rows.size, dtype=np.int64)
        has = group >= 0
        groups, inverse = np.unique(group[has], return_inverse=True)
        out[has] = (self.positions[groups] >= 0).sum(axis=1)[inverse]
        return out

    def take(self, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first ``width`` entries of each row's list: positions, scores, reason codes, each (n, w)."""
        width = min(width, self.positions.shape[1]) if self.positions.shape[0] else 0
        group = self.group[rows]
        if not width:
            empty = np.zeros((rows.size, 0))
            return empty.astype(np.int64), empty, empty.astype(np.int64)
        safe = np.maximum(group, 0)
        positions = np.where(group[:, None] >= 0, self.positions[safe, :width], -1)
        scores = self.scores[safe, :width].astype(np.float64)
        if self.row_reasons is not None:
            reasons = np.broadcast_to(self.row_reasons[rows][:, None], positions.shape)
        elif self.reasons.ndim == 0:
            reasons = np.broadcast_to(self.reasons, positions.shape)
        elif self.reasons.ndim == 2:
            reasons = self.reasons[safe, :width]
        else:
            reasons = np.broadcast_to(self.reasons[safe][:, None], positions.shape)
        return positions, scores, reasons


def window(sources: list[Source], rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``width`` entries of each row's sources read as one list: positions (-1 past its end), scores and
    reason codes, each (n, width)."""
    taken = [source.take(rows, width) for source in sources]
    positions = np.concatenate([t[0] for t in taken], axis=1)
    scores = np.concatenate([t[1] for t in taken], axis=1)
    reasons = np.concatenate([t[2] for t in taken], axis=1)
    if len(sources) > 1:  # move each row's entries left, in order, over the padding of earlier sources
        order = np.argsort(positions < 0, axis=1, kind="stable")
        positions, scores, reasons = (np.take_along_axis(a, order, axis=1) for a in (positions, scores, reasons))
    return positions[:, :width], scores[:, :width], reasons[:, :width]


def rank_within_rows(keys: np.ndarray) -> np.ndarray:
    """For keys (n, w), each entry's count of earlier entries in its row with the same key (a stable sort per
    row, then the distance to the start of the entry's run of equal keys). Keys spanning fewer than 2^15 values
    (category codes) are sorted as int16, which NumPy's stable sort orders by radix: 4x faster than int64 rows of
    500."""
    n, w = keys.shape
    if not w or not n:
        return np.zeros((n, w), dtype=np.int64)
    low, high = int(keys.min()), int(keys.max())
    narrow = (keys - low).astype(np.int16) if high - low < 2**15 else keys
    order = np.argsort(narrow, axis=1, kind="stable")
    flat = (order + (np.arange(n, dtype=np.int64) * w)[:, None]).ravel()  # row-major index of each sorted entry
    ordered = narrow.ravel()[flat].reshape(n, w)
    index = np.arange(w, dtype=np.int64)
    starts = np.ones((n, w), dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    ranks = np.empty(n * w, dtype=np.int64)
    ranks[flat] = (index - first).ravel()
    return ranks.reshape(n, w)


BITSET_BYTES = 1 << 26  # a block's item set is a bit set (B x C bits) up to this size, else sorted keys


class ItemSets:
    """One set of catalogue positions per block row (B rows, C positions): a bit set of B x C bits when small
    enough (``BITSET_BYTES``), else sorted keys ``row * C + position``; `contains` and `add` take (rows, positions)
    arrays of one shape."""

    def __init__(self, rows: int, size: int) -> None:
        self.size = size
        self.bits = np.zeros((rows, (size + 7) // 8), dtype=np.uint8) if rows * size // 8 <= BITSET_BYTES else None
        self.keys = np.zeros(0, dtype=np.int64)

    def add(self, rows: np.ndarray, positions: np.ndarray) -> ItemSets:
        if self.bits is not None:
            np.bitwise_or.at(self.bits, (rows, positions >> 3), (1 << (positions & 7)).astype(np.uint8))
        else:
            self.keys = np.sort(np.concatenate([self.keys, rows.astype(np.int64) * self.size + positions]))
        return self

    def contains(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.bits is not None:
            return ((self.bits[rows, positions >> 3] >> (positions & 7).astype(np.uint8)) & 1).astype(bool)
        if not self.keys.size:
            return np.zeros(positions.shape, dtype=bool)
        keys = rows.astype(np.int64) * self.size + positions
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return self.keys[at] == keys


@dataclass
class Rules:
    """What one section's rows obey, for a block: ``in_stock`` and ``category`` (category codes) by catalogue
    position (C,); ``blocked`` the items each block row may not show (`ItemSets`: on the page already, bought);
    ``cap`` the per-category cap (None: no cap); ``pool_size`` the entries each row pools."""

    in_stock: np.ndarray
    category: np.ndarray
    blocked: tuple[ItemSets, ...]
    cap: int | None
    pool_size: int


def pool(positions: np.ndarray, rows: np.ndarray, rules: Rules, dedupe: np.ndarray) -> np.ndarray:
    """Mask (n, w) of the window entries each row pools (see the module docstring); ``rows`` (n,) are the block
    rows of the window's lines; ``dedupe`` (n,) marks the lines whose window holds several sources (an item may
    come twice: only its first occurrence counts)."""
    valid = positions >= 0
    safe = np.where(valid, positions, 0)
    ok = valid & rules.in_stock[safe]
    lines = np.broadcast_to(rows[:, None], safe.shape)
    for blocked in rules.blocked:
        ok &= ~blocked.contains(lines, safe)
    if dedupe.any():  # only an item's first occurrence in the list (invalid entries are not ok anyway)
        lines = np.flatnonzero(dedupe)
        ok[lines] &= rank_within_rows(np.where(valid[lines], safe[lines], -1)) == 0
    if rules.cap is not None:  # the first ``cap`` ok entries of each category (entries not ok get key -1)
        ok &= rank_within_rows(np.where(ok, rules.category[safe], -1)) < rules.cap
    return ok & (np.cumsum(ok, axis=1) <= rules.pool_size)


def fill_pools(sources: list[Source], rows: np.ndarray, rules: Rules
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's pool, in list order: positions, scores, reason codes, each (n, pool_size) with -1 positions past
    the row's pool, and the pool sizes (n,). Windows widen for the rows whose window ran out first."""
    size = rules.pool_size
    out_positions = np.full((rows.size, size), -1, dtype=np.int64)
    out_scores = np.zeros((rows.size, size))
    out_reasons = np.zeros((rows.size, size), dtype=np.int64)
    counts = np.zeros(rows.size, dtype=np.int64)
    each = np.stack([source.lengths(rows) for source in sources])  # (S, n)
    lengths = each.sum(axis=0)
    todo = np.flatnonzero(lengths > 0)
    width = max(FIRST_WINDOW * size, MIN_WINDOW)
    while todo.size:
        positions, scores, reasons = window(sources, rows[todo], width)
        before = np.cumsum(each[:, todo], axis=0) - each[:, todo]  # entries of earlier sources
        dedupe = ((each[:, todo] > 0) & (before < width)).sum(axis=0) > 1
        mask = pool(positions, rows[todo], rules, dedupe)
        line, column = np.nonzero(mask)
        slot = np.cumsum(mask, axis=1)[line, column] - 1
        out_positions[todo[line], slot] = positions[line, column]
        out_scores[todo[line], slot] = scores[line, column]
        out_reasons[todo[line], slot] = reasons[line, column]
        counts[todo] = mask.sum(axis=1)
        todo = todo[(counts[todo] < size) & (lengths[todo] > width)]
        width *= WIDEN
    return out_positions, out_scores, out_reasons, counts


def mmr_pick(pool_positions: np.ndarray, counts: np.ndarray, vectors: np.ndarray, room: int,
             trade_off: float) -> np.ndarray:
    """Maximal marginal relevance for every row of a block at once: ``pool_positions`` (n, P) in relevance order
    (-1 past each row's ``counts``), ``vectors`` (C, d) unit item vectors. Slot by slot, each row takes

        argmax_{i not chosen} lambda * (1 - rank(i) / |pool|) - (1 - lambda) * max_{j chosen} cos(v_i, v_j)

    (redundancy 0 before the first pick). Returns the chosen pool columns (n, min(room, P)), -1 past
    min(room, count)."""
    n, size = pool_positions.shape
    picks = np.full((n, min(room, size)), -1, dtype=np.int64)
    if not n or not size:
        return picks
    pooled = vectors[np.maximum(pool_positions, 0)]  # (n, P, d)
    similarity = np.matmul(pooled, pooled.transpose(0, 2, 1))  # (n, P, P)
    sizes = np.maximum(counts, 1)[:, None]
    relevance = 1.0 - np.arange(size)[None, :] / sizes
    taken = np.arange(size)[None, :] >= counts[:, None]
    closest = np.full((n, size), -np.inf)
    lines = np.arange(n)
    for step in range(picks.shape[1]):
        active = step < np.minimum(counts, room)
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        gain = np.where(taken, -np.inf, trade_off * relevance - (1 - trade_off) * redundancy)
        best = np.argmax(gain, axis=1)
        picks[active, step] = best[active]
        taken[lines[active], best[active]] = True
        closest = np.where(active[:, None], np.maximum(closest, similarity[lines, :, best]), closest)
    return picks
