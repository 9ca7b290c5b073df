"""Every user's page for a block of users at once: the section functions of `homepage.sections` as candidate
matrices (`homepage.blocks.Source`), filled section by section with `homepage.blocks.fill_pools` (and
`mmr_pick` under ``diversity: mmr``). The rows equal those of `homepage.rows.PageBuilder` walking the same users one
by one, without merchandising (`homepage.build` keeps the builder for pages with boosts or pins).

The page-wide matrices are built once (`BlockPages.__init__`): the item neighbours of every anchor (A, n), the
trending list of every category (K, L), popularity (1, C); per block only the users' own lists (new arrivals
ordered by their scores (B, N), buy again (B, L)) are gathered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from homerank.homepage.blocks import ItemSets, Rules, Source, fill_pools, mmr_pick, rank_within_rows
from homerank.homepage.candidates import CandidateLists
from homerank.homepage.config import HomepageConfig, SectionConfig
from homerank.homepage.last_session import SESSION_REASON
from homerank.homepage.rows import PAGE_COLUMNS
from homerank.homepage.searches import SEARCH_REASON
from homerank.homepage.sections import SECTION_KINDS, SEGMENT_REASON, format_titles
from homerank.homepage.signals import ItemNeighbours, NewArrivalScores, PageSignals


def _padded(lists: list[np.ndarray], fill: float, dtype: Any) -> np.ndarray:
    """Lists as the rows of one (len(lists), longest) array padded with ``fill`` (at least one column)."""
    width = max((len(values) for values in lists), default=0)
    out = np.full((len(lists), max(width, 1)), fill, dtype=dtype)
    for line, values in enumerate(lists):
        out[line, : len(values)] = values
    return out


PROFILE_FIELDS = ("top_category", "segment_name")  # title fields read from the shopper profile
NEW_ARRIVAL_WIDTH = 256  # a block's new-arrival lists are cut to at least this many entries (`new_arrival_width`)


def new_arrival_width(section: SectionConfig, settings: HomepageConfig) -> int:
    """How many of each user's new arrivals a block orders first: ``NEW_ARRIVAL_WIDTH``, or 8 pools when that is
    more (a pool is the row's slots, times ``mmr_pool_factor`` under MMR). A row that cannot fill its pool from
    them is filled again from its whole list (`BlockPages._refill_new_arrivals`), so the cut never changes a row."""
    pool = section.slots * (settings.mmr_pool_factor if settings.diversity == "mmr" else 1)
    return max(NEW_ARRIVAL_WIDTH, 8 * pool)


CUT_CHUNK = 4096  # neighbour lines cut at once (`capped_lists`)
CAP_SLACK = 32  # a capped row reads the cut lists (`capped_lists`) when it blocks at most this many items


def capped_lists(positions: np.ndarray, scores: np.ndarray, in_stock: np.ndarray, category: np.ndarray,
                 keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Lists shared by many rows of a category-capped section (the item neighbours (A, n)) cut, once per page, to
    the in-stock entries among the first ``keep`` in-stock entries of their category, in order; (A, n') padded with
    -1 / 0, n' the longest cut list.

    Exact for a row with at most ``keep - cap`` blocked items (on the page, bought): an entry is pooled only if fewer
    than ``cap`` earlier entries of its category are allowed, and an entry behind ``keep`` in-stock entries of its
    category has at least keep - blocked >= cap allowed ones before it; out-of-stock entries are never pooled. So the
    row pools the same entries, in the same order, from the cut list as from the whole one. At 3 * 10^6 events the
    neighbour lists (500 entries, most of the anchor's category) are cut to a few dozen, and the rows that walked all
    500 of them to find items of other categories no longer do."""
    return _packed(positions, scores, _cut_entries(positions, in_stock, category, keep))


SHORT_LINE_SHARE = 0.99  # `short_lists`: the share of lines kept cut; the longer rest is read whole


def short_lists(positions: np.ndarray, scores: np.ndarray, in_stock: np.ndarray, category: np.ndarray,
                keep: int, share: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`capped_lists` of the ``share`` (default ``SHORT_LINE_SHARE``) of lines with the shortest cut lists, padded
    to the longest of those: (A, w) positions and scores, and ``whole_only`` (A,) bool, the lines left empty, whose
    rows read the whole lists (still exact, only slower). The padded table is as wide as its longest line, and a
    few lines that keep dozens of entries of many categories would make it several times wider than most need: at
    3 * 10^7 events (10^5 anchors x 500 neighbours) the longest cut list held 290 entries, a 232 MB table."""
    kept = _cut_entries(positions, in_stock, category, keep)
    lengths = kept.sum(axis=1)
    share = SHORT_LINE_SHARE if share is None else share
    width = int(np.quantile(lengths, share, method="higher")) if lengths.size else 0
    whole_only = lengths > width
    kept[whole_only] = False
    return (*_packed(positions, scores, kept), whole_only)


def _cut_entries(positions: np.ndarray, in_stock: np.ndarray, category: np.ndarray, keep: int) -> np.ndarray:
    """(A, n) bool: the entries `capped_lists` keeps (in stock, among the first ``keep`` in-stock ones of their
    category in the line)."""
    kept = np.zeros(positions.shape, dtype=bool)
    for start in range(0, positions.shape[0], CUT_CHUNK):  # chunks of lines: a few (chunk, n) temporaries at a time
        lines = positions[start : start + CUT_CHUNK]
        valid = lines >= 0
        safe = np.where(valid, lines, 0)
        ok = valid & in_stock[safe]
        kept[start : start + CUT_CHUNK] = ok & (rank_within_rows(np.where(ok, category[safe], -1)) < keep)
    return kept


def _packed(positions: np.ndarray, scores: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``kept`` (A, n) entries of each line moved to its front, in order: (A, n') padded with -1 / 0, n' the
    most kept in a line (at least 1)."""
    counts = kept.sum(axis=1)
    width = max(int(counts.max(initial=0)), 1)
    out_positions = np.full((positions.shape[0], width), -1, dtype=positions.dtype)
    out_scores = np.zeros((positions.shape[0], width), dtype=scores.dtype)
    line, column = np.nonzero(kept)  # row-major: each line's kept entries in order
    slot = np.arange(line.size) - np.repeat(np.cumsum(counts) - counts, counts)  # rank of the entry in its line
    out_positions[line, slot] = positions[line, column]
    out_scores[line, slot] = scores[line, column]
    return out_positions, out_scores


def best_first(scores: np.ndarray, width: int | None) -> np.ndarray:
    """Column indices (n, min(width, N)) of each row of ``scores`` (n, N) by descending score, ties by column: the
    first ``width`` columns of ``np.argsort(-scores, axis=1, kind="stable")`` (None: all of them), found with a
    partition, O(n N), and a sort of the ``width`` kept, instead of sorting all N.

    The partition keeps each row's ``width`` largest, with an arbitrary choice among the entries equal to the
    width-th largest score t; a row with more entries equal to t than it kept takes instead those scoring above t,
    then the first columns scoring exactly t (`_head_with_ties`). The kept columns, in column order, are then
    sorted stably by descending score."""
    n, total = scores.shape
    if width is None or width >= total or not np.isfinite(scores).all():
        return np.argsort(-scores, axis=1, kind="stable")[:, : total if width is None else width]
    columns = np.argpartition(scores, total - width, axis=1)[:, total - width :]  # the width largest of each row
    kept = np.take_along_axis(scores, columns, axis=1)
    threshold = kept.min(axis=1, keepdims=True)
    unsure = np.flatnonzero((scores == threshold).sum(axis=1) > (kept == threshold).sum(axis=1))
    if unsure.size:
        columns[unsure] = _head_with_ties(scores[unsure], width)
    columns.sort(axis=1)
    order = np.argsort(-np.take_along_axis(scores, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)


def _head_with_ties(scores: np.ndarray, width: int) -> np.ndarray:
    """The columns (n, width), in column order, of each row's entries above its width-th largest score t, then of
    its first entries equal to t until there are ``width``."""
    n = scores.shape[0]
    threshold = -np.partition(-scores, width - 1, axis=1)[:, width - 1 : width]  # (n, 1) the width-th largest
    above = scores > threshold
    tied = scores == threshold
    take = above | (tied & (np.cumsum(tied, axis=1) <= width - above.sum(axis=1, keepdims=True)))
    return np.nonzero(take)[1].reshape(n, width)  # row by row, in column order


def grouped_best_first(vector_scores: np.ndarray, vector_of: np.ndarray, width: int | None) -> np.ndarray:
    """`best_first` of the scores (n, N) ``vector_scores[:, vector_of]``, without making them: entries share G
    distinct values per row (``vector_of`` (N,): each column's group, e.g. new arrivals sharing one mean vector).

    Within a group every column has the same score, so its columns come in column order; a row whose groups have
    distinct scores lists its groups by descending score, each group's columns in turn, and the first ``width``
    entries are those of the groups that start before ``width``: O(n (G log G + width)) instead of partitioning N
    columns per row. Rows where two groups tie (or a score is not finite) go through `best_first` of their whole
    (N,) rows, where ties between groups interleave by column."""
    n, groups = vector_scores.shape
    total = vector_of.size
    width = total if width is None else min(width, total)
    out = np.empty((n, width), dtype=np.int64)
    if not n or not width:
        return out
    sizes = np.bincount(vector_of, minlength=groups)
    used = np.flatnonzero(sizes)
    if used.size < groups:  # only groups with columns: an empty one must not hide a tie between its neighbours
        renumber = np.zeros(groups, dtype=np.int64)
        renumber[used] = np.arange(used.size)
        return grouped_best_first(vector_scores[:, used], renumber[vector_of], width)
    members = np.argsort(vector_of, kind="stable")  # each group's columns, in column order, group after group
    ranked, tied = _ranked_groups(vector_scores)
    _lay_out(out, ranked, sizes[ranked], members, sizes)
    if tied.any():
        rows = np.flatnonzero(tied)
        out[rows] = best_first(vector_scores[rows][:, vector_of], width)
    return out


def capped_grouped_order(vector_scores: np.ndarray, vector_of: np.ndarray, in_stock: np.ndarray,
                         category: np.ndarray, keep: int, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """`grouped_best_first`'s lists cut as `capped_lists` cuts the item neighbours, for the rows of a
    category-capped section: each row's in-stock columns (``in_stock`` (N,)), best first, at most ``keep`` of each
    category (``category`` (N,) codes), the first ``width`` of them. Returns the columns (n, width), -1 past a shorter
    list, and which rows hold their cut list (n,) bool: False where two groups tie or a score is not finite (their
    items interleave by column: those rows read the whole list); None when a group's items are of several categories.

    Per row, each group (one category, its in-stock columns in column order) contributes its first
    clip(keep - before, 0, size) columns, ``before`` the in-stock columns of the same category in the row's earlier
    groups: an exclusive cumulative sum within each category along the row's group order. Exact, as `capped_lists`,
    for a row with at most ``keep - cap`` blocked items: it pools the same columns in the same order as from the whole
    list. New arrivals the model never saw share their category and price band's vector, so the first 256 entries of a
    whole list often hold two categories only: under a cap of 3 its pool of 8 could not fill, and 22% of the rows at
    3 * 10^7 events were ordered again over all 3,000 new arrivals."""
    n, groups = vector_scores.shape
    columns = np.flatnonzero(in_stock)
    group_of = vector_of[columns]
    sizes = np.bincount(group_of, minlength=groups)
    lowest = np.full(groups, np.iinfo(np.int64).max)
    highest = np.full(groups, np.iinfo(np.int64).min)
    np.minimum.at(lowest, group_of, category[columns])
    np.maximum.at(highest, group_of, category[columns])
    if (lowest[sizes > 0] != highest[sizes > 0]).any():
        return None
    used = np.flatnonzero(sizes)
    out = np.full((n, width), -1, dtype=np.int64)
    if not n or not width or not used.size:
        return out, np.ones(n, dtype=bool)
    scores, sizes, group_category = vector_scores[:, used], sizes[used], lowest[used]
    renumber = np.zeros(groups, dtype=np.int64)
    renumber[used] = np.arange(used.size)
    group_of = renumber[group_of]
    members = columns[np.argsort(group_of, kind="stable")]  # each group's in-stock columns, in column order
    ranked, tied = _ranked_groups(scores)
    ranked_sizes, ranked_category = sizes[ranked], group_category[ranked]
    # in-stock entries of the same category in earlier groups of the row: an exclusive cumsum within each category
    by_category = np.argsort(ranked_category, axis=1, kind="stable")
    sorted_sizes = np.take_along_axis(ranked_sizes, by_category, axis=1)
    sorted_category = np.take_along_axis(ranked_category, by_category, axis=1)
    running = np.cumsum(sorted_sizes, axis=1) - sorted_sizes
    run_start = np.ones(sorted_category.shape, dtype=bool)
    run_start[:, 1:] = sorted_category[:, 1:] != sorted_category[:, :-1]
    base = np.maximum.accumulate(np.where(run_start, running, 0), axis=1)
    before = np.empty_like(running)
    np.put_along_axis(before, by_category, running - base, axis=1)
    _lay_out(out, ranked, np.clip(keep - before, 0, ranked_sizes), members, sizes)
    return out, ~tied


def _ranked_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's groups by descending score, ties by group number, (n, G); and the rows (n,) where two groups tie or
    a score is not finite (their columns would interleave: the callers take the whole sort there)."""
    ranked = np.argsort(-scores, axis=1, kind="stable")
    ranked_scores = np.take_along_axis(scores, ranked, axis=1)
    return ranked, (ranked_scores[:, 1:] == ranked_scores[:, :-1]).any(axis=1) | ~np.isfinite(scores).all(axis=1)


def _lay_out(out: np.ndarray, ranked: np.ndarray, take: np.ndarray, members: np.ndarray, sizes: np.ndarray) -> None:
    """Fill each row of ``out`` (n, width) with the first ``take`` (n, G) columns of each of its ranked groups in turn,
    up to ``width``: ``members`` lists every group's columns group after group, ``sizes`` (G,) how many each has."""
    width = out.shape[1]
    starts = np.cumsum(sizes) - sizes
    first = np.cumsum(take, axis=1) - take  # (n, G) slot of each ranked group's first column
    line, rank = np.nonzero((first < width) & (take > 0))
    group, begin = ranked[line, rank], first[line, rank]
    count = np.minimum(take[line, rank], width - begin)
    offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    out[np.repeat(line, count), np.repeat(begin, count) + offset] = members[np.repeat(starts[group], count) + offset]


class BlockPages:
    """Builds the page rows of any block of users (`build`) from page-wide ``signals``; ``vectors`` (C, d) are
    unit item vectors by catalogue position (MMR)."""

    def __init__(self, signals: PageSignals, settings: HomepageConfig, vectors: np.ndarray) -> None:
        self.signals = signals
        self.settings = settings
        self.vectors = vectors
        catalogue = signals.catalogue
        self.in_stock = np.asarray(catalogue.in_stock, dtype=bool)
        self.category_names, self.category = np.unique(catalogue.category, return_inverse=True)
        # because_you_viewed: anchors (A,) sorted, their neighbours (A, n)
        neighbours = ItemNeighbours.of(signals.neighbours)
        self.anchors, self.neighbour_positions, self.neighbour_scores = (neighbours.anchors, neighbours.positions,
                                                                          neighbours.scores)
        self.short_neighbours = None  # (positions, scores): the lists cut for rows with few blocked items
        self.whole_neighbours = np.zeros(self.anchors.size, dtype=bool)  # lines whose rows read the whole lists
        if settings.diversity != "mmr" and SECTION_KINDS["because_you_viewed"].category_cap:
            *cut, self.whole_neighbours = short_lists(self.neighbour_positions, self.neighbour_scores,
                                                      self.in_stock, self.category,
                                                      settings.max_per_category + CAP_SLACK)
            self.short_neighbours = (cut[0], cut[1])
        # trending_in_category: categories (K,) sorted, their lists (K, L)
        self.trend_names = np.array(sorted(signals.trending_by_category), dtype=object)
        lists = [signals.trending_by_category[c] for c in self.trend_names]
        self.trend_positions = _padded(lists, -1, np.int64)
        self.trend_scores = _padded([catalogue.trending[p] for p in lists], 0.0, np.float64)
        self.top_category = signals.top_category
        # new_arrivals: reason codes of the model's reasons, and the cold users' list (by trending)
        self.new_reason_names, self.new_reason_codes = np.unique(np.asarray(signals.new_reason, dtype=object),
                                                                 return_inverse=True)
        new = signals.new_positions
        by_trend = np.argsort(-catalogue.trending[new], kind="stable")
        self.new_cold_positions, self.new_cold_scores = new[by_trend][None, :], catalogue.trending[new][by_trend][None]
        # for_you of users without a model row: their segment's favourites (S,) sorted, lists (S, L)
        favourites = signals.segment_favourites
        self.segment_ids = np.array(sorted(favourites), dtype=np.int64)
        self.segment_positions = _padded([favourites[s][0] for s in self.segment_ids.tolist()], -1, np.int64)
        self.segment_scores = _padded([favourites[s][1] for s in self.segment_ids.tolist()], 0.0, np.float64)

    def _segment_groups(self, users: np.ndarray, model_rows: np.ndarray) -> np.ndarray:
        """Row of ``segment_positions`` for each user without a model row whose segment has favourites, else -1."""
        group = np.full(users.size, -1, dtype=np.int64)
        if not self.segment_ids.size:
            return group
        segment = self.signals.segment.reindex(users).to_numpy(dtype=np.float64)
        known = ~np.isnan(segment) & (model_rows < 0)
        segment = np.where(known, segment, -1).astype(np.int64)
        at = np.minimum(np.searchsorted(self.segment_ids, segment), self.segment_ids.size - 1)
        return np.where(known & (self.segment_ids[at] == segment), at, -1)

    def _sections(self, users: np.ndarray, section: SectionConfig, model_rows: np.ndarray,
                  signals: PageSignals, cut_rows: np.ndarray | None = None
                  ) -> tuple[list[Source], list[str], dict[str, np.ndarray], np.ndarray]:
        """A section's sources for the block (``signals``: the block's, `PageSignals.for_block`), its reason table,
        the title template's values per row (each (B,)), and which rows take the section's ``segment_title`` (B,)
        bool. ``cut_rows`` (B,), for a category-capped section, marks the rows with few enough blocked items to read
        lists cut per category (`capped_grouped_order`; new arrivals only)."""
        catalogue, kind, count, lists = signals.catalogue, section.kind, users.size, signals.candidates
        plain = np.zeros(count, dtype=bool)
        if kind == "for_you":
            popularity = signals.by_popularity
            segment_group = self._segment_groups(users, model_rows)
            sources = [] if lists is None else [Source(lists.positions, lists.scores, np.array(0),
                                                       lists.lines(model_rows))]
            reasons = ["for_you:model_score", "for_you:fallback_popularity"]
            if self.segment_ids.size:
                sources.append(Source(self.segment_positions, self.segment_scores,
                                      np.arange(2, 2 + self.segment_ids.size), segment_group))
                reasons += [f"{SEGMENT_REASON}:{segment}" for segment in self.segment_ids.tolist()]
            sources.append(Source(popularity[None, :], catalogue.popularity[popularity][None, :], np.array(1),
                                  np.zeros(count, np.int64)))
            return sources, reasons, {}, segment_group >= 0
        if kind == "because_you_viewed":
            anchor = signals.last_viewed.reindex(users).to_numpy(dtype=np.float64)
            known = ~np.isnan(anchor)
            anchor = np.where(known, anchor, -1).astype(np.int64)
            group = np.full(count, -1, dtype=np.int64)
            if self.anchors.size:
                at = np.minimum(np.searchsorted(self.anchors, anchor), self.anchors.size - 1)
                group = np.where(known & (self.anchors[at] == anchor), at, -1)
            used = np.unique(group[group >= 0])
            reasons = [f"because_you_viewed:similar_to:{catalogue.item_ids[a]}" for a in self.anchors[used].tolist()]
            codes = np.full(max(self.anchors.size, 1), -1, dtype=np.int64)
            codes[used] = np.arange(used.size)
            anchor_titles = np.append(catalogue.title[np.maximum(self.anchors, 0)].astype(object), "")
            values = {"item_title": anchor_titles[np.where(group >= 0, group, -1)]}
            return [Source(self.neighbour_positions, self.neighbour_scores, codes, group)], reasons, values, plain
        if kind == "trending_in_category":
            top = self.top_category.reindex(users)
            known = top.notna().to_numpy()
            names = np.where(known, top.astype(object).to_numpy(), signals.global_category)
            group = np.searchsorted(self.trend_names, names)
            labels = pd.Series(np.where(known, "trending_in_category:user_top_category:",
                                        "trending_in_category:fallback_global:"), dtype=object) + names.astype(str)
            codes, reasons = pd.factorize(labels)
            return ([Source(self.trend_positions, self.trend_scores, np.array(0), group,
                            codes.astype(np.int64))],
                    list(reasons), {"category": names.astype(object)}, plain)
        if kind == "new_arrivals":
            if not signals.new_positions.size:
                return [], [], {}, plain
            reasons = list(self.new_reason_names) + ["new_arrival:fallback_trending"]
            warm = np.flatnonzero(model_rows >= 0)
            return ([self._new_arrivals_of(warm, model_rows, signals, new_arrival_width(section, self.settings),
                                           None if cut_rows is None else cut_rows[warm]),
                     Source(self.new_cold_positions, self.new_cold_scores,
                            np.array(len(reasons) - 1), np.where(model_rows < 0, 0, -1))],
                    reasons, {}, plain)
        if kind == "buy_again":
            rows = signals.buy_again.rows(users)
            group = np.where(rows >= 0, np.cumsum(rows >= 0) - 1, -1)
            positions = signals.buy_again.padded(rows[rows >= 0])
            return ([Source(positions, np.zeros(positions.shape), np.array(0), group)],
                    ["buy_again:purchased_before"], {}, plain)
        if kind == "related_to_searches":
            history = signals.searches
            if history is None:
                return [], [], {}, plain
            positions, scores, group = history.candidates_of(users)
            values = {"query": history.newest_query(users)} if "{query" in section.title else {}
            return [Source(positions, scores, np.array(0), group)], [SEARCH_REASON], values, plain
        if kind == "continue_shopping":
            if signals.last_session is None:
                return [], [], {}, plain
            positions, group = signals.last_session.lists(users)
            return ([Source(positions, np.zeros(positions.shape), np.array(0), group)], [SESSION_REASON], {},
                    plain)
        raise ValueError(f"unknown section kind {kind!r}")

    def _new_arrivals_of(self, warm: np.ndarray, model_rows: np.ndarray, signals: PageSignals,
                         width: int | None, cut: np.ndarray | None = None) -> Source:
        """The new arrivals of the block rows ``warm`` (users with a model row) ordered by their scores, best
        first (ties by catalogue order of the new arrivals): the first ``width`` of each list (None: all N). Rows
        marked in ``cut`` (``warm``'s shape) read their lists cut per category (`capped_grouped_order`, at most
        ``max_per_category + CAP_SLACK`` in-stock items of each category) where the scores allow it."""
        new, table = signals.new_positions, signals.new_scores
        if warm.size and isinstance(table, NewArrivalScores) and table.vector_of is not None:
            vector_scores = table.scores[table.lines(model_rows[warm])]  # (n, G): one score per distinct vector
            order = self._grouped_order(vector_scores, table.vector_of, new, width, cut)
            scores = np.take_along_axis(vector_scores, table.vector_of[np.maximum(order, 0)], axis=1)
        else:
            full = table[model_rows[warm]] if warm.size else np.zeros((0, new.size))
            order = best_first(full, width)
            scores = np.take_along_axis(full, order, axis=1)
        group = np.full(model_rows.size, -1, dtype=np.int64)
        group[warm] = np.arange(warm.size)
        return Source(np.where(order >= 0, new[np.maximum(order, 0)], -1), scores,
                      self.new_reason_codes[np.maximum(order, 0)], group)

    def _grouped_order(self, vector_scores: np.ndarray, vector_of: np.ndarray, new: np.ndarray, width: int | None,
                       cut: np.ndarray | None) -> np.ndarray:
        """`grouped_best_first` of every row, and `capped_grouped_order` for the rows marked in ``cut`` that hold a
        cut list; (n, w) columns, -1 past a cut list's end."""
        if cut is None or width is None or not cut.any():
            return grouped_best_first(vector_scores, vector_of, width)
        capped = capped_grouped_order(vector_scores[cut], vector_of, self.in_stock[new], self.category[new],
                                      self.settings.max_per_category + CAP_SLACK, min(width, vector_of.size))
        if capped is None:
            return grouped_best_first(vector_scores, vector_of, width)
        lists, held = capped
        short = np.zeros(cut.size, dtype=bool)
        short[np.flatnonzero(cut)[held]] = True
        order = np.full((cut.size, lists.shape[1]), -1, dtype=np.int64)
        order[short] = lists[held]
        if (~short).any():
            order[~short] = grouped_best_first(vector_scores[~short], vector_of, width)
        return order

    def _refill_new_arrivals(self, model_rows: np.ndarray, signals: PageSignals, section: SectionConfig,
                             sources: list[Source], rules: Rules, filled: tuple[np.ndarray, ...]) -> None:
        """The new_arrivals rows of model users whose pool is not full from the first ``new_arrival_width``
        entries of their lists are filled again, in place in ``filled``, from their whole lists (every other row
        already equals the whole list's walk: its pool filled before the cut)."""
        if new_arrival_width(section, self.settings) >= signals.new_positions.size:
            return
        counts = filled[3]
        need = np.flatnonzero((model_rows >= 0) & (counts < rules.pool_size))
        if not need.size:
            return
        again = [self._new_arrivals_of(need, model_rows, signals, None), *sources[1:]]
        for array, redone in zip(filled, fill_pools(again, need, rules), strict=True):
            array[need] = redone

    def _bought(self, users: np.ndarray) -> tuple[ItemSets, np.ndarray]:
        """The positions each of the block's users bought, and how many (B,)."""
        lines, positions = self.signals.purchased.flat(self.signals.purchased.rows(users))
        return (ItemSets(users.size, self.in_stock.size).add(lines, positions),
                np.bincount(lines, minlength=users.size))

    def _refill_from_whole_lists(self, model_rows: np.ndarray, lists: CandidateLists, sources: list[Source],
                                 rules: Rules, filled: tuple[np.ndarray, ...]) -> None:
        """The for_you rows filled from the users' first, short model lists (``lists.truncated``) that walked past
        their end (a fallback item pooled, or the pool not full) are filled again, in place in ``filled``
        (positions, scores, reason codes, counts), from the whole lists; every other row already equals the
        whole list's walk (`homerank.homepage.candidates`)."""
        positions, _, codes, counts = filled
        past_end = ((codes != 0) & (positions >= 0)).any(axis=1) | (counts < rules.pool_size)
        need = np.flatnonzero((lists.lines(model_rows) >= 0) & past_end)
        if not need.size or self.signals.model_candidates is None:
            return
        whole = self.signals.model_candidates.for_rows(model_rows[need], whole=True)
        again = [Source(whole.positions, whole.scores, np.array(0), whole.lines(model_rows)), *sources[1:]]
        for array, redone in zip(filled, fill_pools(again, need, rules), strict=True):
            array[need] = redone

    def build(self, users: np.ndarray) -> pd.DataFrame:
        """Page rows (``PAGE_COLUMNS``) of ``users`` (B,), grouped by user in the given order, sections in page
        order, slots 1..n. The block's own signals (the model's candidates and new-arrival scores of these users)
        are made here (`homerank.homepage.signals.PageSignals.for_block`)."""
        model_rows = self.signals.model_rows(users)
        signals = self.signals.for_block(users, model_rows=model_rows)
        lists = signals.candidates
        settings, catalogue, size = self.settings, self.signals.catalogue, self.in_stock.size
        rows = np.arange(users.size, dtype=np.int64)
        bought, bought_count = self._bought(users)
        used = ItemSets(users.size, size)
        on_page = np.zeros(users.size, dtype=np.int64)  # items each row's page shows so far
        parts: list[dict[str, np.ndarray]] = []
        profile_values: dict[str, np.ndarray] | None = None  # the profile's title fields, read once when named
        for order, section in enumerate(settings.sections):
            kind = SECTION_KINDS[section.kind]
            mmr = settings.diversity == "mmr" and kind.category_cap
            few = None  # rows with at most CAP_SLACK blocked items (on the page so far, bought): cut lists are exact
            if kind.category_cap and not mmr:
                few = on_page + (0 if kind.shows_purchased else bought_count) <= CAP_SLACK
            sources, reasons, values, segment_rows = self._sections(users, section, model_rows, signals, few)
            if not sources:
                continue
            templates = np.full(users.size, section.title, dtype=object)
            if section.segment_title:
                templates[segment_rows] = section.segment_title
            if any(f"{{{name}" in template for name in PROFILE_FIELDS for template in (section.title,
                                                                                     section.segment_title or "")):
                profile_values = profile_values or self.signals.title_values(users)
                values = {**profile_values, **values}
            titles = format_titles(templates, values)
            room = section.slots
            pool_size = max(room * settings.mmr_pool_factor, room) if mmr else room
            blocked = (used,) if kind.shows_purchased else (used, bought)
            cap = settings.max_per_category if kind.category_cap and not mmr else None
            rules = Rules(self.in_stock, self.category, blocked, cap, pool_size)
            if section.kind == "because_you_viewed" and few is not None and self.short_neighbours is not None:
                group = sources[0].group
                if self.whole_neighbours.any():  # rows of a line left out of the cut table read the whole lists
                    few = few & ~((group >= 0) & self.whole_neighbours[np.maximum(group, 0)])
                short = Source(*self.short_neighbours, sources[0].reasons, group)
                positions, scores, codes, counts = _fill_in_parts(([short], rows[few]), (sources, rows[~few]),
                                                                  rules=rules)
            else:
                positions, scores, codes, counts = fill_pools(sources, rows, rules)
            if section.kind == "for_you" and lists is not None and lists.truncated:
                self._refill_from_whole_lists(model_rows, lists, sources, rules, (positions, scores, codes, counts))
            if section.kind == "new_arrivals":
                self._refill_new_arrivals(model_rows, signals, section, sources, rules,
                                          (positions, scores, codes, counts))
            if mmr:
                picks = mmr_pick(positions, counts, self.vectors, room, settings.mmr_lambda)
                chosen = picks >= 0
                line, slot = np.nonzero(chosen)
                column = picks[line, slot]
            else:
                line, column = np.nonzero(positions[:, :room] >= 0)
                slot = column
            picked = positions[line, column]
            used.add(line, picked)
            on_page += np.bincount(line, minlength=users.size)
            reason_table = np.array(list(reasons) + [""], dtype=object)
            parts.append({"line": line, "order": np.full(line.size, order), "slot": slot + 1, "position": picked,
                          "score": scores[line, column], "reason": reason_table[codes[line, column]],
                          "title": titles[line], "section": np.full(line.size, section.kind, dtype=object)})
        if not parts:
            return pd.DataFrame({column: pd.Series(dtype=object) for column in PAGE_COLUMNS})
        merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        order = np.lexsort((merged["slot"], merged["order"], merged["line"]))
        return pd.DataFrame({
            "user_id": users[merged["line"][order]], "section": merged["section"][order],
            "section_title": merged["title"][order], "slot": merged["slot"][order].astype(np.int64),
            "item_id": catalogue.item_ids[merged["position"][order]],
            "score": merged["score"][order].astype(np.float64), "reason": merged["reason"][order],
        }, columns=PAGE_COLUMNS)


def _fill_in_parts(*parts: tuple[list[Source], np.ndarray], rules: Rules
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`fill_pools` of disjoint sets of block rows, each from its own sources: ``parts`` (sources, rows (n_j,));
    the results (positions, scores, reason codes, counts) as one, in block row order (rows 0..B-1, every row in
    one part)."""
    total = sum(rows.size for _, rows in parts)
    out = (np.full((total, rules.pool_size), -1, dtype=np.int64), np.zeros((total, rules.pool_size)),
           np.zeros((total, rules.pool_size), dtype=np.int64), np.zeros(total, dtype=np.int64))
    for sources, rows in parts:
        if rows.size:
            for array, filled in zip(out, fill_pools(sources, rows, rules), strict=True):
                array[rows] = filled
    return out
