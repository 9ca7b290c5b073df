"""The page-wide facts the section functions read, computed once for all users: the model's candidates as
catalogue positions, the item neighbours of each user's last viewed item, trending items per category, new
arrivals with every user's score, and each user's purchases and top category.

Neighbours are by cosine of the learned item embeddings, cos(e_a, e_j) = e_a . e_j / (|e_a| |e_j|), the anchor
itself excluded, found with a faiss index (`homerank.gnn.item_index`; exact up to 100,000 model items, an
inverted file above). A new arrival's score for user u is e_u . v_i with v_i the item's (possibly inductive) vector;
its reason names where v_i came from (`homerank.homepage.catalogue.VECTOR_SOURCES`): ``new_arrival:model_score``,
``new_arrival:cold_start_content`` (the train stage's content-only embedding) or
``new_arrival:cold_start_category_price_band`` (the mean vector).
A user's top category maximises the summed interaction weight, ties to the alphabetically first category.

From the ETL's ``etl/searches/`` and ``etl/last_session/`` (optional): the users' recent queries against the items'
text features (`homerank.homepage.searches`) and their last-session items (`homerank.homepage.last_session`).

From the shopper profiles (`homerank.engine.profiles`, ``RUN/etl/profiles/``; all optional): each user's segment
and the profile's top category (by event count). A segment's favourites rank items by the number of the segment's
training users who interacted with them (the definition of popularity, restricted to one segment; ties by overall
popularity, then catalogue position); users without a model embedding get them before overall popularity.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from homerank.engine import schema
from homerank.engine.split import SPLIT
from homerank.gnn.item_index import ItemIndex
from homerank.homepage.candidates import CandidateFn, CandidateLists, ModelCandidates
from homerank.homepage.catalogue import Catalogue
from homerank.homepage.config import HomepageConfig
from homerank.homepage.last_session import LastSession, last_session
from homerank.homepage.ragged import Ragged
from homerank.homepage.searches import SearchHistory, search_history

POSITION = "pos"  # catalogue position of an interaction's item
# a new arrival's reason by the source code of its vector (homerank.homepage.catalogue.VECTOR_SOURCES)
NEW_ARRIVAL_REASONS = np.array(["new_arrival:model_score", "new_arrival:cold_start_content",
                                "new_arrival:cold_start_category_price_band"])


@dataclass
class PageSignals:
    """Everything a section needs to pick one user's candidates. C = catalogue items, U = model users,
    k = model candidates per user, N = new arrivals."""

    catalogue: Catalogue
    model_row: pd.Series  # user id -> row of the user embeddings (int64); absent for cold users (a dict is taken)
    candidates: CandidateLists | None  # the model's candidates (catalogue positions, best first) of every model
    # user, or of one block's users (`for_block`); None in page-wide signals scored block by block
    by_popularity: np.ndarray  # (C,) positions, most popular first
    last_viewed: pd.Series  # user id -> position of the most recently viewed item
    neighbours: Mapping[int, tuple[np.ndarray, np.ndarray]]  # anchor position -> (positions, cosines), closest
    # first (`ItemNeighbours`, one padded table; a dict in hand-made signals)
    trending_by_category: dict[str, np.ndarray]  # category -> its positions, most trending first
    top_category: pd.Series  # user id -> the user's top category
    global_category: str  # the category with the largest summed trending
    new_positions: np.ndarray  # (N,) positions created within new_arrival_days of the reference time
    new_scores: np.ndarray | NewArrivalScores | None  # a model row's new-arrival scores: ``new_scores[row]`` (N,),
    # ``new_scores[rows]`` (n, N); page-wide signals hold None and make a block's in `for_block` (never a (U, N) table)
    new_reason: np.ndarray  # (N,) model score, or cold start (content or mean vector) for items the model never saw
    purchases: pd.DataFrame  # (user_id, item_id) of every interaction with a purchase
    purchased: Ragged  # user id -> positions bought (a dict of lists is taken)
    buy_again: Ragged  # user id -> positions bought in repeat-purchase categories, newest first (or a dict)
    # from the shopper profiles (empty without them)
    segment: pd.Series = field(default_factory=lambda: pd.Series(dtype=np.int64))  # user id -> segment
    segment_names: dict[int, str] = field(default_factory=dict)  # segment -> its name
    segment_favourites: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # segment ->
    # (positions, training users of the segment), most popular in the segment first
    profile_top_category: pd.Series = field(default_factory=lambda: pd.Series(dtype=object))  # user id -> category
    searches: SearchHistory | None = None  # the users' recent queries and the items' text vectors (related_to_searches)
    last_session: LastSession | None = None  # the users' last-session items not bought (continue_shopping)
    model_candidates: ModelCandidates | None = None  # makes the candidates of any model rows (`for_block`)
    new_arrival_scorer: NewArrivalScorer | None = None  # makes the new-arrival scores of any model rows (`for_block`)

    def __post_init__(self) -> None:  # hand-made signals (tests) give plain dicts
        if not isinstance(self.model_row, pd.Series):
            self.model_row = pd.Series(self.model_row, dtype=np.int64)
        for name in ("purchased", "buy_again"):
            if not isinstance(getattr(self, name), Ragged):
                setattr(self, name, Ragged.from_mapping(getattr(self, name)))

    def for_block(self, users: np.ndarray, whole: bool = False, model_rows: np.ndarray | None = None
                  ) -> PageSignals:
        """These signals for a block of ``users`` (B,): with the model's candidates of those users (their first,
        short lists, or the whole lists when ``whole``: `homerank.homepage.candidates.ModelCandidates.for_rows`;
        kept when the signals hold every user's already) and their new-arrival scores (`NewArrivalScorer`).
        ``model_rows`` (B,), the users' model rows (-1: none) when the caller has them."""
        held = self.candidates is not None and self.candidates.rows is None  # every user's lists already
        scored = self.model_candidates is not None and not held
        if not scored and self.new_arrival_scorer is None:
            return self
        rows = model_rows if model_rows is not None else self.model_rows(users)
        changes: dict[str, Any] = {}
        if scored:
            assert self.model_candidates is not None
            changes["candidates"] = self.model_candidates.for_rows(rows, whole)
        if self.new_arrival_scorer is not None:
            changes["new_scores"] = self.new_arrival_scorer.for_rows(rows)
        return replace(self, **changes)

    def model_rows(self, users: np.ndarray) -> np.ndarray:
        """(B,) the model embedding row of each of ``users``, -1 for a cold user."""
        if not len(self.model_row):
            return np.full(len(users), -1, dtype=np.int64)
        return self.model_row.reindex(users).fillna(-1).to_numpy(dtype=np.int64)

    def title_values(self, users: np.ndarray) -> dict[str, np.ndarray]:
        """The profile's title fields for ``users`` (B,): ``top_category`` (the profile's, else the interactions',
        else the log's top category) and ``segment_name`` ("shoppers" without one), object arrays (B,)."""
        top = self.profile_top_category.reindex(users).astype(object)
        top = top.where(top.notna(), self.top_category.reindex(users).astype(object))
        top = top.where(top.notna(), self.global_category)
        names = pd.Series(self.segment_names, dtype=object)
        segment = self.segment.reindex(users).map(names) if len(names) else pd.Series(index=users, dtype=object)
        return {"top_category": top.to_numpy(dtype=object),
                "segment_name": segment.where(segment.notna(), "shoppers").to_numpy(dtype=object)}


@dataclass
class NewArrivalScores:
    """The new-arrival scores of some model rows: ``rows`` (n,) sorted distinct model rows, ``scores`` (n, G) the
    scores of the G distinct new-arrival vectors and ``vector_of`` (N,) each new arrival's vector (None: G = N, one
    vector each); indexed like a (U, N) table by model row (``self[row]`` (N,), ``self[rows]`` (m, N)), for the rows
    it holds. New arrivals the model never saw share their category and price band's mean vector, so G is often far
    below N (at 3 * 10^7 events: 3,000 new arrivals, one vector per category and price band)."""

    rows: np.ndarray
    scores: np.ndarray
    vector_of: np.ndarray | None = None

    def lines(self, model_rows: Any) -> Any:
        """The line of ``scores`` of each of ``model_rows`` (KeyError for a row this block did not score)."""
        at = np.searchsorted(self.rows, model_rows)
        inside = at < self.rows.size
        if not (np.all(inside) and np.array_equal(self.rows[np.where(inside, at, 0)], model_rows)):
            raise KeyError(f"new-arrival scores of model rows {model_rows} were not made for this block")
        return at

    def __getitem__(self, model_rows: Any) -> np.ndarray:
        scores = self.scores[self.lines(model_rows)]
        return scores if self.vector_of is None else scores[..., self.vector_of]


@dataclass
class NewArrivalScorer:
    """e_u . v_i for every new arrival i and any model user u, made block by block (`for_rows`): ``user_vectors``
    (U, d) the user embeddings, ``new_vectors`` (N, d) the new arrivals' vectors, scored once per distinct vector
    (`NewArrivalScores`). A block of B users costs a (B, G) table, where every user's table (U, N) grows with the
    square of the log (users x items)."""

    user_vectors: torch.Tensor
    new_vectors: torch.Tensor

    def __post_init__(self) -> None:
        vectors = self.new_vectors.detach().cpu().numpy()
        if vectors.shape[0] > 1:
            distinct, vector_of = np.unique(vectors, axis=0, return_inverse=True)
            if distinct.shape[0] < vectors.shape[0]:
                self.new_vectors = torch.from_numpy(np.ascontiguousarray(distinct))
                self.vector_of: np.ndarray | None = vector_of.reshape(-1).astype(np.int64)
                return
        self.vector_of = None

    def for_rows(self, model_rows: np.ndarray) -> NewArrivalScores:
        """The scores of the distinct non-negative ``model_rows`` (-1 allowed: users without a model row)."""
        rows = np.unique(np.asarray(model_rows, dtype=np.int64))
        rows = rows[rows >= 0]
        scores = (self.user_vectors[torch.from_numpy(rows)] @ self.new_vectors.T).numpy()
        return NewArrivalScores(rows, scores, self.vector_of)


def model_positions(catalogue: Catalogue, num_items: int) -> np.ndarray:
    """Catalogue position of every model item, shape (num_items,) (-1 for a model item not in the catalogue)."""
    positions = np.full(num_items, -1, dtype=np.int64)
    known = catalogue.model_index >= 0
    positions[catalogue.model_index[known]] = np.flatnonzero(known)
    return positions


def last_viewed_items(interactions: pd.DataFrame, chunk: int | None = None) -> pd.Series:
    """User id -> catalogue position of the newest item with a view (any interaction when the log has no
    view counts); ``interactions`` carries the ``pos`` column. Ties in ``last_ts`` go to the row that comes first in
    ``interactions`` (the ETL writes them by user, then item). One hashed group-by (the row of each user's largest
    ``last_ts``), O(rows), instead of sorting every row by time, per piece of ``chunk`` rows (default
    ``USER_CHUNK``) cut at user boundaries when the rows come in user order (`user_pieces`), so a piece's selections
    and codes are the only temporaries (the whole frame's were ~0.7 GB at 3 * 10^7 events)."""
    views = interactions.get(schema.count_column("view"), interactions[schema.WEIGHT]).to_numpy()
    last = interactions[schema.LAST_TS].to_numpy()
    users_all, positions = interactions[schema.USER].to_numpy(), interactions[POSITION].to_numpy()
    parts = []
    for piece in user_pieces(users_all, USER_CHUNK if chunk is None else chunk):
        rows = np.flatnonzero((views[piece] > 0) & ~pd.isna(last[piece])) + piece.start
        if not rows.size:
            continue
        codes, users = pd.factorize(users_all[rows], sort=False)
        newest = pd.Series(last[rows]).groupby(codes, sort=False).idxmax()
        parts.append(pd.Series(positions[rows[newest.to_numpy()]],
                               index=pd.Index(users.take(newest.index.to_numpy()), name=schema.USER), name=POSITION))
    if not parts:
        return pd.Series(dtype=np.int64, index=pd.Index([], name=schema.USER), name=POSITION)
    return pd.concat(parts) if len(parts) > 1 else parts[0]


USER_CHUNK = 1 << 21  # interactions per piece of the per-user signals when the rows come in user order


def int32_indexer(index: pd.Index, values: Any, chunk: int = USER_CHUNK) -> np.ndarray:
    """``index.get_indexer(values)`` (the position of each value in ``index``, -1 where it is not there) as (N,) int32,
    looked up ``chunk`` values at a time into the int32 result: pandas' int64 indexer of a whole column is never held
    (146 MB for the 18.2M interactions of 3 * 10^7 events, besides the 73 MB kept). ``index`` has < 2^31 entries."""
    column = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
    out = np.empty(len(column), dtype=np.int32)
    for start in range(0, len(column), chunk):
        out[start : start + chunk] = index.get_indexer(column[start : start + chunk])
    return out


def user_pieces(users: np.ndarray, chunk: int) -> list[slice]:
    """Row ranges of about ``chunk`` rows, each cut at a user boundary (every user's rows in one range), when
    ``users`` (n,) come in user order (non-decreasing numbers, e.g. the ETL's (user, item) order); else one range of
    every row."""
    if users.dtype.kind not in "iuf" or not _in_order(users, chunk):
        return [slice(0, users.size)]
    pieces, start = [], 0
    while start < users.size:
        stop = min(start + chunk, users.size)
        stop = int(np.searchsorted(users, users[stop - 1], side="right"))  # the piece's last user whole
        pieces.append(slice(start, stop))
        start = stop
    return pieces


# The anchors are every user's last viewed item, so nearly every item is one when the catalogue is large: the search
# is a batch of A ~ I queries, where exact search costs O(I^2 d). Above NEIGHBOUR_EXACT_ITEMS an inverted file
# (`homerank.gnn.item_index`, approximate="ivf": 4 sqrt(I) lists, 32 probed) costs O(I^1.5 d). Measured on the
# 2-core machine (`python -m bench.neighbour_index_recall`, 4,096 sampled anchors, 501 neighbours, 2 threads;
# bench/results/neighbours/) with the 3 * 10^7-event run's 146,806 item embeddings (d = 64): exact 34.6 s for all
# anchors, IVF 14.4 s including its 2.0 s build, recall against the exact lists @10 0.998, @50 0.997, @501 0.988; HNSW
# (M 32, efConstruction 200) took 27.7 s only to build. On the 10^7-event run's 48,976 items the gain is smaller
# (6.2 s against 4.2 s) and the recall lower (@50 0.987): exact search is kept up to 100,000 items.
NEIGHBOUR_EXACT_ITEMS = 100_000
NEIGHBOUR_CHUNK = 8192  # anchors searched at once


@dataclass(eq=False)
class ItemNeighbours(Mapping):
    """The closest items of each anchor, as one padded table: ``anchors`` (A,) sorted catalogue positions,
    ``positions`` (A, n) their neighbours' catalogue positions closest first (-1 past a shorter list) and
    ``scores`` (A, n) the cosines (0 past the end). Read as a mapping anchor -> (positions, cosines) of that
    anchor's list, like the dict the user-by-user builder reads; the block builder takes the table as it is."""

    anchors: np.ndarray
    positions: np.ndarray
    scores: np.ndarray

    @classmethod
    def of(cls, neighbours: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> ItemNeighbours:
        """``neighbours`` as a table: itself when it is one, else a mapping (e.g. hand-made signals) padded."""
        if isinstance(neighbours, ItemNeighbours):
            return neighbours
        anchors = np.array(sorted(neighbours), dtype=np.int64)
        lists = [neighbours[a] for a in anchors.tolist()]
        width = max([len(positions) for positions, _ in lists] + [1])
        positions = np.full((anchors.size, width), -1, dtype=np.int64)
        scores = np.zeros((anchors.size, width))
        for line, (found, cosines) in enumerate(lists):
            positions[line, : len(found)], scores[line, : len(found)] = found, cosines
        return cls(anchors, positions, scores)

    def _line(self, anchor: Any) -> int:
        at = int(np.searchsorted(self.anchors, anchor)) if self.anchors.size else 0
        if at >= self.anchors.size or self.anchors[at] != anchor:
            raise KeyError(anchor)
        return at

    def __getitem__(self, anchor: Any) -> tuple[np.ndarray, np.ndarray]:
        line = self._line(anchor)
        length = int((self.positions[line] >= 0).sum())
        return self.positions[line, :length], self.scores[line, :length]

    def __contains__(self, anchor: object) -> bool:
        try:
            self._line(anchor)
        except (KeyError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(self.anchors.tolist())

    def __len__(self) -> int:
        return int(self.anchors.size)


def item_neighbours(anchors: np.ndarray, catalogue: Catalogue, item_embeddings: torch.Tensor,
                    positions_of_model_items: np.ndarray, count: int) -> ItemNeighbours:
    """For each anchor position (model items only; ``anchors`` distinct), its ``count`` closest model items by
    cosine, as (catalogue positions, cosines), closest first; ``item_embeddings`` is (num_items, d).

    The search is `homerank.gnn.item_index.ItemIndex` (faiss), so no (anchors x items) similarity block is ever
    held: exact up to ``NEIGHBOUR_EXACT_ITEMS`` model items, an inverted file above. Each anchor asks for count + 1
    items and drops itself; the kept entries move to the front of their line (A x n arrays, no per-anchor
    objects)."""
    anchors = np.sort(np.asarray(anchors, dtype=np.int64))
    if not anchors.size:
        return ItemNeighbours(anchors, np.full((0, 1), -1, dtype=np.int64), np.zeros((0, 1)))
    vectors = item_embeddings.detach().cpu().numpy().astype(np.float32)
    index = ItemIndex(exact_threshold=NEIGHBOUR_EXACT_ITEMS, approximate="ivf").build(vectors)
    anchor_rows = catalogue.model_index[anchors]
    wanted = min(count, vectors.shape[0] - 1)
    # int32 positions and float32 cosines (faiss's own precision): at 3 * 10^7 events, ~10^5 anchors x 500
    # neighbours take 400 MB instead of 800 MB; the anchors are searched in chunks, so the search's (chunk, n + 1)
    # results and their sorting are the only temporaries (the whole table's were ~2 GB there)
    positions = np.full((anchors.size, max(wanted, 1)), -1, dtype=np.int32)
    cosines = np.zeros((anchors.size, max(wanted, 1)), dtype=np.float32)
    for start in range(0, anchors.size, NEIGHBOUR_CHUNK):
        chunk = anchor_rows[start : start + NEIGHBOUR_CHUNK]
        scores, rows = index.search(vectors[chunk], wanted + 1)
        keep = (rows != chunk[:, None]) & (rows >= 0)
        keep &= np.cumsum(keep, axis=1) <= wanted  # the anchor found: drop it; not found: drop the last item
        order = np.argsort(~keep, axis=1, kind="stable")[:, : max(wanted, 1)]  # kept entries first, in order
        kept = np.take_along_axis(keep, order, axis=1)
        lines = slice(start, start + chunk.size)
        positions[lines] = np.where(kept, positions_of_model_items[np.take_along_axis(rows, order, axis=1)], -1)
        cosines[lines] = np.where(kept, np.take_along_axis(scores, order, axis=1), 0.0)
    return ItemNeighbours(anchors, positions, cosines)


def new_arrivals(catalogue: Catalogue, vectors: torch.Tensor, user_embeddings: torch.Tensor,
                 reference_time: pd.Timestamp, days: float, vector_source: np.ndarray | None = None
                 ) -> tuple[np.ndarray, NewArrivalScorer, np.ndarray]:
    """Items created within ``days`` of ``reference_time``: their positions (N,), the scorer of a model user's
    scores user_embeddings[u] . vectors[positions].T (`NewArrivalScorer`, block by block), and a reason per item
    (N,) from the source of its vector, ``vector_source`` (C,) (`homerank.homepage.catalogue.item_vectors`; None:
    model or mean vector)."""
    created = pd.to_datetime(catalogue.created_at)
    positions = np.flatnonzero(np.asarray(created >= reference_time - pd.Timedelta(days=days)))
    scorer = NewArrivalScorer(user_embeddings.detach().cpu(), vectors[torch.from_numpy(positions)].detach().cpu())
    if vector_source is None:
        vector_source = np.where(catalogue.model_index >= 0, 0, 2)
    return positions, scorer, NEW_ARRIVAL_REASONS[vector_source[positions]]


CATEGORY_BINS = 1 << 24  # users x categories summed with one bincount (8 bytes each) up to this many bins


def top_categories(interactions: pd.DataFrame, catalogue: Catalogue, chunk: int | None = None) -> pd.Series:
    """User id -> the category with the largest summed interaction weight (ties: alphabetically first). Grouped on
    integer codes (user code * K + category code, K categories numbered in alphabetical order), not on the category
    text of every row. Interactions in user order (the ETL's (user, item) order) are summed ``chunk`` rows at a
    time (default ``USER_CHUNK``), each piece cut at a user boundary (`user_pieces`), so a piece's codes and sums are
    the only temporaries (the whole log's were ~0.5 GB at 3 * 10^7 events); any other order in one piece."""
    names, category_codes = np.unique(catalogue.category, return_inverse=True)
    if not len(interactions):
        return pd.Series(dtype=object, index=pd.Index([], name=schema.USER), name="category")
    users = interactions[schema.USER].to_numpy()
    positions = interactions[POSITION].to_numpy()
    weights = interactions[schema.WEIGHT].to_numpy()
    parts = [_top_categories_of(users[piece], category_codes[positions[piece]], weights[piece], names)
             for piece in user_pieces(users, USER_CHUNK if chunk is None else chunk)]
    return pd.concat(parts) if len(parts) > 1 else parts[0]


def _in_order(values: np.ndarray, chunk: int) -> bool:
    """Whether ``values`` (n,) are non-decreasing, checked ``chunk`` at a time."""
    pieces = (values[start : start + chunk + 1] for start in range(0, max(values.size - 1, 0), chunk))
    return all(bool((piece[1:] >= piece[:-1]).all()) for piece in pieces)  # neighbouring pieces share one value


def _top_categories_of(user_ids: np.ndarray, category: np.ndarray, weights: np.ndarray, names: np.ndarray
                       ) -> pd.Series:
    """`top_categories` of interactions given as user ids (n,), category codes (n,) into ``names`` and weights
    (n,): each user's category of largest summed weight, ties to the smaller code (the alphabetically first)."""
    user_codes, users = pd.factorize(user_ids, sort=False)
    keys = user_codes.astype(np.int64) * names.size + category
    weights = np.asarray(weights, dtype=np.float64)
    if users.size * names.size <= CATEGORY_BINS and bool((weights > 0).all()):
        # (U, K) sums by one bincount: with positive weights a category the user never touched (sum 0) never wins
        sums = np.bincount(keys, weights, minlength=users.size * names.size).reshape(users.size, names.size)
        best = np.argmax(sums, axis=1)  # the first maximum: the alphabetically first of tied categories
        return pd.Series(names[best].astype(object), index=pd.Index(users, name=schema.USER), name="category")
    sums = pd.Series(weights).groupby(keys).sum()
    key, total = sums.index.to_numpy(), sums.to_numpy()
    user, category = key // names.size, key % names.size
    order = np.lexsort((category, -total, user))  # per user: largest sum first, ties by category name
    user, category = user[order], category[order]
    first = np.r_[True, user[1:] != user[:-1]]
    return pd.Series(names[category[first]].astype(object), index=pd.Index(users.take(user[first]),
                                                                           name=schema.USER), name="category")


def collect_signals(catalogue: Catalogue, vectors: torch.Tensor, interactions: pd.DataFrame,
                    candidate_items: np.ndarray | CandidateFn, candidate_scores: np.ndarray | None,
                    user_embeddings: torch.Tensor,
                    item_embeddings: torch.Tensor, user_index: pd.DataFrame, reference_time: pd.Timestamp,
                    settings: HomepageConfig, profiles: pd.DataFrame | None = None,
                    edges: pd.DataFrame | None = None, vector_source: np.ndarray | None = None,
                    searches: pd.DataFrame | None = None, sessions: pd.DataFrame | None = None,
                    profile_fields: dict[str, Any] | None = None, with_neighbours: bool = True,
                    history_fields: dict[str, Any] | None = None) -> PageSignals:
    """All page-wide facts. ``vectors`` (C, d) are the catalogue's item vectors (inductive where needed) and
    ``vector_source`` (C,) where each came from (`homerank.homepage.catalogue.item_vectors`; None: model or mean);
    ``candidate_items``/``candidate_scores`` (U, k) are the model's top items per user row (model item index), or
    ``candidate_items`` is a `homerank.homepage.candidates.CandidateFn` (``candidate_scores`` None) that scores the
    rows of one block at a time (`PageSignals.for_block`), ``settings.candidates`` per user;
    ``profiles`` (user_id, segment, segment_name, top_category_1; None without profiles) and ``edges`` (the
    k-core edges with ``split``) give the segments and their favourites; ``searches`` (user_id, timestamp, query)
    and ``sessions`` (the ETL's last-session table), None without them, the related_to_searches and
    continue_shopping rows (read only when a section of that kind is configured). ``profile_fields``, when given,
    are the profile's fields made beforehand (`profile_signals`, e.g. by a caller that frees the edges first), in
    place of those of ``profiles`` and ``edges``; ``history_fields``, when given, are the searches' and last
    sessions' signals made beforehand (`history_signals`, e.g. by a caller that frees those tables before the
    interactions' tables are made), in place of those of ``searches`` and ``sessions``. Without
    ``with_neighbours`` the last viewed items' neighbours are left empty, for the caller to find once it has freed
    the interactions (`viewed_item_neighbours`)."""
    # int32 catalogue positions by one index lookup (a dict map made an int64 column: 139 MiB at 3 * 10^7 events)
    positions = int32_indexer(pd.Index(catalogue.item_ids), interactions[schema.ITEM])
    if positions.size and positions.min() < 0:  # build_catalogue adds every interaction's item
        raise ValueError("an interaction's item is missing from the catalogue")
    interactions = interactions.assign(**{POSITION: positions})
    del positions
    positions_of_model_items = model_positions(catalogue, item_embeddings.shape[0])
    last_viewed = last_viewed_items(interactions)
    by_trend = np.argsort(-catalogue.trending, kind="stable")
    new_positions, new_arrival_scorer, new_reason = new_arrivals(catalogue, vectors, user_embeddings, reference_time,
                                                                 settings.new_arrival_days, vector_source)
    purchased_column = schema.count_column("purchase")
    bought = interactions.loc[interactions[purchased_column].to_numpy() > 0 if purchased_column in interactions
                              else np.zeros(len(interactions), dtype=bool), [schema.USER, schema.ITEM, schema.LAST_TS,
                                                                             POSITION]]
    again = bought[np.isin(catalogue.category[bought[POSITION].to_numpy()], settings.repeat_purchase_categories)]
    signals = PageSignals(
        catalogue=catalogue,
        model_row=pd.Series(user_index[schema.USER_INDEX].to_numpy(dtype=np.int64),
                            index=pd.Index(user_index[schema.USER].to_numpy())),
        candidates=(None if candidate_scores is None else
                    CandidateLists(positions_of_model_items[candidate_items], np.asarray(candidate_scores))),
        model_candidates=(ModelCandidates(candidate_items, positions_of_model_items,
                                          min(settings.candidates, item_embeddings.shape[0]))
                          if candidate_scores is None else None),
        by_popularity=np.argsort(-catalogue.popularity, kind="stable"),
        last_viewed=last_viewed,
        neighbours={},  # below, or by the caller (`viewed_item_neighbours`)
        trending_by_category={c: by_trend[catalogue.category[by_trend] == c] for c in np.unique(catalogue.category)},
        top_category=top_categories(interactions, catalogue),
        global_category=pd.Series(catalogue.trending).groupby(catalogue.category).sum().idxmax(),
        new_positions=new_positions, new_scores=None, new_arrival_scorer=new_arrival_scorer, new_reason=new_reason,
        purchases=bought[[schema.USER, schema.ITEM]],
        purchased=Ragged.by_owner(bought[schema.USER], bought[POSITION].to_numpy(dtype=np.int64)),
        buy_again=_lists_by_user(again.sort_values(schema.LAST_TS, ascending=False, kind="stable")),
        **(profile_signals(profiles, edges, catalogue) if profile_fields is None else profile_fields),
        **(history_signals(searches, sessions, catalogue, reference_time, settings) if history_fields is None
           else history_fields),
    )
    if with_neighbours:
        signals.neighbours = viewed_item_neighbours(signals, item_embeddings, settings.candidates)
    return signals


def viewed_item_neighbours(signals: PageSignals, item_embeddings: torch.Tensor, count: int) -> ItemNeighbours:
    """`item_neighbours` of every model item that is some user's last viewed item (``signals.last_viewed``)."""
    catalogue = signals.catalogue
    viewed_positions = signals.last_viewed.to_numpy(dtype=np.int64)
    anchors = np.unique(viewed_positions[catalogue.model_index[viewed_positions] >= 0])
    return item_neighbours(anchors, catalogue, item_embeddings,
                           model_positions(catalogue, item_embeddings.shape[0]), count)


def history_signals(searches: pd.DataFrame | None, sessions: pd.DataFrame | None, catalogue: Catalogue,
                    reference_time: pd.Timestamp, settings: HomepageConfig) -> dict[str, Any]:
    """The `PageSignals` fields made of the ETL's searches (``searches``: related_to_searches) and last sessions
    (``continue_shopping``), each None when no section of its kind is configured or there is no table."""
    return {"searches": (search_history(searches, catalogue, reference_time, settings.search)
                         if _shows(settings, "related_to_searches") else None),
            "last_session": last_session(sessions, catalogue) if _shows(settings, "continue_shopping") else None}


def _shows(settings: HomepageConfig, kind: str) -> bool:
    return any(section.kind == kind for section in settings.sections)


FAVOURITE_BINS = 1 << 24  # segments x catalogue items counted with one bincount up to this many bins
FAVOURITE_CHUNK = 1 << 21  # training pairs per piece of the segment favourites' count


def profile_signals(profiles: pd.DataFrame | None, edges: pd.DataFrame | None, catalogue: Catalogue
                     ) -> dict[str, Any]:
    """The PageSignals fields read from the shopper profiles: segments, their names and favourites, top category."""
    if profiles is None or not len(profiles):
        return {}
    out: dict[str, Any] = {}
    users = profiles[schema.USER]
    if "top_category_1" in profiles:
        top = pd.Series(profiles["top_category_1"].astype(object).to_numpy(), index=users.to_numpy())
        out["profile_top_category"] = top[top.notna()]
    if "segment" not in profiles:
        return out
    segment = pd.Series(profiles["segment"].to_numpy(dtype=np.int64), index=users.to_numpy())
    out["segment"] = segment
    if "segment_name" in profiles:
        names = profiles[["segment", "segment_name"]].drop_duplicates("segment")
        out["segment_names"] = dict(zip(names["segment"].astype(int).tolist(), names["segment_name"].astype(str),
                                        strict=True))
    if edges is None or SPLIT not in edges:
        return out
    # training users per (segment, position), counted on the key segment code * C + position (a bincount while
    # segments x C stays small, else the distinct keys), FAVOURITE_CHUNK edges at a time: the pieces' pairs, lookups
    # and keys are the only temporaries (the whole training pairs' were ~0.7 GB at 3 * 10^7 events)
    segments = np.unique(segment.to_numpy())
    item_positions = pd.Index(catalogue.item_ids)
    size = max(len(catalogue.item_ids), 1)
    tally = np.zeros(segments.size * size, dtype=np.int64) if segments.size * size <= FAVOURITE_BINS else None
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    for train_users, train_items in distinct_pairs_in_pieces(edges, (edges[SPLIT] == "train").to_numpy(),
                                                             FAVOURITE_CHUNK):
        users_segment = segment.reindex(train_users).to_numpy(dtype=np.float64)
        positions = item_positions.get_indexer(train_items)
        known = ~np.isnan(users_segment) & (positions >= 0)
        keys = np.searchsorted(segments, users_segment[known].astype(np.int64)) * size + positions[known]
        if tally is not None:
            tally += np.bincount(keys, minlength=tally.size)
        else:
            pieces.append(np.unique(keys, return_counts=True))
    if tally is not None:
        key = np.flatnonzero(tally)
        users_of = tally[key]
    else:
        key, inverse = np.unique(np.concatenate([k for k, _ in pieces] or [np.zeros(0, np.int64)]),
                                 return_inverse=True)
        users_of = np.bincount(inverse.reshape(-1), weights=np.concatenate([c for _, c in pieces] or [np.zeros(0)]),
                               minlength=key.size).astype(np.int64)
    if not key.size:
        return out
    seg, pos = segments[key // size], key % size
    order = np.lexsort((pos, -catalogue.popularity[pos], -users_of, seg))
    seg, pos, users_of = seg[order], pos[order], users_of[order]
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    out["segment_favourites"] = {
        int(s): (p, c.astype(np.float64)) for s, p, c in zip(
            seg[starts].tolist(), np.split(pos, starts[1:]), np.split(users_of, starts[1:]), strict=True)}
    return out


def distinct_pairs_in_pieces(edges: pd.DataFrame, selected: np.ndarray, chunk: int
                             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The distinct (user_id, item_id) pairs of ``edges``' ``selected`` rows ((E,) bool), as pieces of (users,
    items) arrays drawn from ``chunk`` edges at a time, each pair in exactly one piece. When the edges come in (user,
    item) order, as the ETL writes them, twins are neighbours among the selected rows: a selected row is kept when it
    differs from the selected row before it (the previous piece's last one included), so only one piece's rows are
    ever gathered; any other order goes through ``drop_duplicates`` of all the selected pairs."""
    users, items = edges[schema.USER].to_numpy(), edges[schema.ITEM].to_numpy()
    ordered = users.dtype.kind in "iu" and items.dtype.kind in "iu"
    for start in range(0, max(users.size - 1, 0), chunk):  # the (user, item) order, checked a piece at a time
        if not ordered:
            break
        u, i = users[start : start + chunk + 1], items[start : start + chunk + 1]
        ordered = bool(((u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (i[1:] >= i[:-1]))).all())
    if not ordered:
        rows = np.flatnonzero(selected)
        pairs = pd.DataFrame({schema.USER: users[rows], schema.ITEM: items[rows]}).drop_duplicates()
        del rows
        for start in range(0, len(pairs), chunk):
            yield (pairs[schema.USER].to_numpy()[start : start + chunk],
                   pairs[schema.ITEM].to_numpy()[start : start + chunk])
        return
    last: tuple[Any, Any] | None = None  # the previous piece's last selected pair
    for start in range(0, users.size, chunk):
        rows = np.flatnonzero(selected[start : start + chunk]) + start
        if not rows.size:
            continue
        u, i = users[rows], items[rows]
        first = np.empty(rows.size, dtype=bool)
        first[0] = last is None or (u[0], i[0]) != last
        first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
        last = (u[-1], i[-1])
        yield u[first], i[first]


def _lists_by_user(frame: pd.DataFrame) -> Ragged:
    """User id -> the ``pos`` column of the user's rows, in the frame's order."""
    return Ragged.by_owner(frame[schema.USER], frame[POSITION].to_numpy(dtype=np.int64))
