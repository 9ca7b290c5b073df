"""The generative story of the synthetic e-commerce behaviour log, one user range at a time.

* Items live in (category, segment) cells; item popularity follows a power law p_i ∝ r_i^-alpha over a
  random popularity rank r_i. The catalogue has category, price (log-normal per category), title,
  created_at and in_stock; a few items are brand new (created in the last days, never interacted with).
* Each user u has sparse tastes over categories (Dirichlet with small concentration) and over segments, an
  activity a_u ~ LogNormal(0, 0.8) and S_u = 1 + Poisson(s · a_u / E[a]) sessions (s from the wanted events).
* A session picks a category from the user's taste (or explores by global popularity), views
  V = 1 + Poisson(views) items drawn from the user's preferred segment by popularity, and runs the funnel
  view -> click -> cart -> purchase with fixed conversion probabilities. Timestamps spread over
  ``weeks`` weeks; events inside a session are seconds to minutes apart.
* Optionally (``search_share`` > 0) a session starts with a search: an event of type ``search`` without an item,
  at the session's start, whose ``query`` is the session's category name in lower case, preceded with probability
  1 - `CATEGORY_ONLY_QUERIES` by the style word of the segment of the session's first view
  ("sport shoes", "shoes"): the same latent taste words as the item titles. A share ``dirty_fraction`` of extra
  search rows has an empty query.
* Optionally a small share of dirty rows (null user, unknown event type, missing timestamp) and exact
  duplicates, so the demo exercises quarantine and de-duplication.

Where each random number comes from (``default_rng([seed, stream, key])``), so nothing depends on how the
work is split between workers:

* stream 0: the catalogue and the popularity tables (`make_catalogue`), from the seed alone;
* stream 2, key = user block b (``USER_BLOCK`` users): activity and session counts of the users in block b;
* stream 3, key = user block b: category and segment tastes of the users in block b;
* stream 4: the style words of the titles (`_style_words`);
* stream 5, key = partition number p: which of partition p's sessions start with a search, and their queries
  (`_with_searches`), so the other events do not depend on ``search_share``;
* stream 1, key = partition number p: the sessions, views, funnel and noise of partition p's users
  (`partition_events`); which users partition p owns is fixed by the spec (`synthetic_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

USER_ID_OFFSET = 1_000_000
ITEM_ID_OFFSET = 500_000
START = pd.Timestamp("2026-09-01")
EVENT_TYPES = ["view", "click", "cart", "purchase"]  # the funnel, in order
ADJECTIVES = ["Classic", "Urban", "Eco", "Smart", "Deluxe", "Compact", "Vintage", "Pro", "Soft", "Bold"]
# the style word of each item segment (segment s uses word s mod 8), so that titles carry the segment
STYLE_WORDS = ["budget", "premium", "sport", "kids", "studio", "travel", "organic", "retro"]
STYLE_FIDELITY = 0.8
USER_BLOCK = 4096  # users per block of per-user draws (streams 2 and 3); small, so a partition recomputes little
ACTIVITY_SIGMA = 0.8  # a_u ~ LogNormal(0, ACTIVITY_SIGMA), E[a_u] = exp(sigma^2 / 2)
SEARCH_EVENT = "search"
CATEGORY_ONLY_QUERIES = 0.3  # share of queries naming the category alone ("shoes"), not its style ("sport shoes")


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and behaviour of the synthetic log. ``events`` is the expected number of clean events; a
    partition holds at most ``users_per_partition`` users and (see `synthetic_plan`) ``partition_events``
    events."""

    users: int = 20_000
    items: int = 10_000
    events: int = 1_000_000
    categories: int = 24
    segments: int = 4
    weeks: int = 8
    popularity_alpha: float = 0.9
    taste_concentration: float = 0.08
    explore: float = 0.1
    views_per_session: float = 2.5
    p_click: float = 0.3
    p_cart: float = 0.3
    p_purchase: float = 0.5
    new_item_share: float = 0.02
    dirty_fraction: float = 0.0005
    duplicate_fraction: float = 0.002
    seed: int = 42
    users_per_partition: int = 2_500
    partition_events: int = 1_000_000
    search_share: float = 0.0  # probability that a session starts with a search event (a `query` column); 0: none


@dataclass(frozen=True)
class World:
    """What every partition needs from the catalogue: O(items) arrays, computed once from the seed.

    ``cell_cdf``/``cell_items`` (I,): items sorted by cell, with cell id + cumulative popularity share inside
    the cell, so ``cell_items[searchsorted(cell_cdf, c + u)]`` with u ~ U[0, 1) draws an item of cell c by
    popularity; ``category_cdf``/``category_items`` the same per category (exploration);
    ``global_category_share`` (C,) the popularity share of each category.
    """

    item_cell: np.ndarray
    item_category: np.ndarray
    cell_cdf: np.ndarray
    cell_items: np.ndarray
    category_cdf: np.ndarray
    category_items: np.ndarray
    global_category_share: np.ndarray

    @property
    def categories(self) -> int:
        return int(self.global_category_share.size)


def n_categories(spec: SyntheticSpec) -> int:
    return max(2, min(spec.categories, spec.items // (4 * spec.segments)))


def _stacked_cdf(groups: np.ndarray, weights: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """For sampling inside a group g: searchsorted(cdf, g + u) with u ~ U[0, 1)."""
    order = np.lexsort((np.arange(groups.size), groups))
    g, w = groups[order], weights[order]
    totals = np.bincount(g, weights=w, minlength=n_groups)
    within = np.cumsum(w) - np.repeat(np.cumsum(totals) - totals, np.bincount(g, minlength=n_groups))
    cdf = g + within / totals[g]
    return cdf, order


def category_names(n: int) -> np.ndarray:
    base = ["Shoes", "Books", "Garden", "Kitchen", "Toys", "Audio", "Beauty", "Sports", "Outdoor", "Pets",
            "Office", "Games", "Baby", "Tools", "Lighting", "Jewelry", "Bags", "Coffee", "Grocery", "Phones",
            "Cameras", "Bikes", "Art", "Music"]
    return np.array([base[i % len(base)] + ("" if i < len(base) else f" {i // len(base) + 1}") for i in range(n)])


def _style_words(rng: np.random.Generator, segment: np.ndarray) -> np.ndarray:
    """A style word per item (stream 4, so the catalogue's other columns keep their draws): with probability
    `STYLE_FIDELITY` its segment's word, else any style word. Titles thus carry the segment half of the
    shoppers' taste (the category half is the category's name), which text features can learn from."""
    words = np.asarray(STYLE_WORDS, dtype=object)
    own = words[segment % len(STYLE_WORDS)]
    anything = words[rng.integers(0, len(STYLE_WORDS), segment.size)]
    return np.where(rng.random(segment.size) < STYLE_FIDELITY, own, anything)


def make_catalogue(spec: SyntheticSpec) -> tuple[pd.DataFrame, World]:
    """The item catalogue (items rows: item_id, category, segment, price, title, created_at, in_stock) and the
    `World` tables, both from stream 0 of the seed."""
    rng = np.random.default_rng([spec.seed, 0])
    n_cat = n_categories(spec)
    n_cells = n_cat * spec.segments
    cell = rng.permutation(np.arange(spec.items) % n_cells)
    category = cell // spec.segments
    rank = rng.permutation(spec.items) + 1
    popularity = rank.astype(np.float64) ** -spec.popularity_alpha
    n_new = int(round(spec.new_item_share * spec.items))
    new_items = rng.choice(spec.items, size=n_new, replace=False)
    popularity[new_items] = 1e-12  # brand-new: (practically) never sampled
    log_end = START + pd.Timedelta(weeks=spec.weeks)
    created = START - pd.to_timedelta(rng.integers(30, 720, spec.items), unit="D")
    created = created.to_numpy().copy()
    created[new_items] = (log_end - pd.to_timedelta(rng.integers(0, 3, n_new), unit="D")).to_numpy()
    price_scale = np.exp(rng.normal(3.0, 0.8, n_cat))
    price = np.round(price_scale[category] * np.exp(rng.normal(0, 0.4, spec.items)), 2)
    names = category_names(n_cat)
    adjectives = rng.integers(0, len(ADJECTIVES), spec.items)
    segment = cell % spec.segments
    styles = _style_words(np.random.default_rng([spec.seed, 4]), segment)
    titles = [f"{ADJECTIVES[a]} {w} {n}-{i}" for i, (a, w, n) in enumerate(
        zip(adjectives, styles, names[category], strict=True))]
    catalogue = pd.DataFrame(
        {
            "item_id": np.arange(spec.items, dtype=np.int64) + ITEM_ID_OFFSET,
            "category": names[category],
            "segment": segment.astype(np.int64),
            "price": price,
            "title": titles,
            "created_at": created.astype("datetime64[ns]"),
            "in_stock": rng.random(spec.items) > 0.05,
        }
    )
    cell_cdf, cell_items = _stacked_cdf(cell, popularity, n_cells)
    category_cdf, category_items = _stacked_cdf(category, popularity, n_cat)
    share = np.bincount(category, weights=popularity, minlength=n_cat)
    world = World(cell, category, cell_cdf, cell_items, category_cdf, category_items, share / share.sum())
    return catalogue, world


def events_per_view(spec: SyntheticSpec) -> float:
    """E[Y], Y = events one view makes = 1 + B1 + B1·B2 + B1·B2·B3 (click, cart, purchase Bernoullis)."""
    return 1 + spec.p_click * (1 + spec.p_cart * (1 + spec.p_purchase))


def events_per_session(spec: SyntheticSpec) -> float:
    """E[X] = E[V]·E[Y] clean events per session, V = 1 + Poisson(views_per_session) views."""
    return (1 + spec.views_per_session) * events_per_view(spec)


def sessions_per_user(spec: SyntheticSpec) -> float:
    """s such that E[sum_u S_u] · E[X] = events, S_u = 1 + Poisson(s · a_u / E[a]) (never below one session)."""
    return max(0.0, spec.events / (spec.users * events_per_session(spec)) - 1)


def _block_range(first_user: int, last_user: int) -> range:
    return range(first_user // USER_BLOCK, (last_user - 1) // USER_BLOCK + 1) if last_user > first_user else range(0)


def block_sessions(spec: SyntheticSpec, block: int) -> np.ndarray:
    """S_u for the users of one block (stream 2): (min(USER_BLOCK, users - block·USER_BLOCK),) int64."""
    size = min(USER_BLOCK, spec.users - block * USER_BLOCK)
    rng = np.random.default_rng([spec.seed, 2, block])
    activity = np.exp(rng.normal(0.0, ACTIVITY_SIGMA, size))
    mean_activity = np.exp(ACTIVITY_SIGMA**2 / 2)
    return 1 + rng.poisson(sessions_per_user(spec) * activity / mean_activity).astype(np.int64)


def user_sessions(spec: SyntheticSpec, first_user: int, last_user: int) -> np.ndarray:
    """S_u for users first_user..last_user-1 (user indices, 0-based): (last_user - first_user,) int64."""
    parts = [block_sessions(spec, b) for b in _block_range(first_user, last_user)]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    start = _block_range(first_user, last_user)[0] * USER_BLOCK
    return np.concatenate(parts)[first_user - start : last_user - start]


def user_tastes(spec: SyntheticSpec, n_cat: int, first_user: int, last_user: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative category and segment tastes of users first_user..last_user-1 (stream 3): (n, C) and (n, segments),
    each row a CDF of Dirichlet(taste_concentration + 1e-3) resp. Dirichlet(0.3) weights."""
    categories, segments = [], []
    for block in _block_range(first_user, last_user):
        size = min(USER_BLOCK, spec.users - block * USER_BLOCK)
        rng = np.random.default_rng([spec.seed, 3, block])
        categories.append(rng.dirichlet(np.full(n_cat, spec.taste_concentration) + 1e-3, size=size))
        segments.append(rng.dirichlet(np.full(spec.segments, 0.3), size=size))
    start = _block_range(first_user, last_user)[0] * USER_BLOCK
    window = slice(first_user - start, last_user - start)
    return (np.cumsum(np.concatenate(categories)[window], axis=1),
            np.cumsum(np.concatenate(segments)[window], axis=1))


def partition_events(spec: SyntheticSpec, world: World, number: int, first_user: int, last_user: int,
                     first_session: int) -> pd.DataFrame:
    """The events of users first_user..last_user-1, with session ids from ``first_session`` on.

    Returns (n, 6): user_id Int64, item_id int64, event_type string, timestamp datetime64[ns], session_id int64,
    value float64, sorted by (timestamp, user_id), then the injected duplicates and dirty rows appended. With
    ``search_share`` > 0 a seventh column, query (string, null but for searches), holds the search rows, and
    item_id is Int64 (null for searches). The draws use stream 1 of partition ``number`` and the users' own blocks
    (stream 5 for the searches), so the frame depends only on the spec and the arguments.
    """
    rng = np.random.default_rng([spec.seed, 1, number])
    n_cat = world.categories
    sessions = user_sessions(spec, first_user, last_user)
    taste_cdf, segment_cdf = user_tastes(spec, n_cat, first_user, last_user)
    session_user = np.repeat(np.arange(last_user - first_user), sessions)
    n_sessions = session_user.size
    session_category = (taste_cdf[session_user] < rng.random((n_sessions, 1))).sum(axis=1)
    session_category = np.minimum(session_category, n_cat - 1)
    explore = rng.random(n_sessions) < spec.explore
    session_category[explore] = rng.choice(n_cat, size=int(explore.sum()), p=world.global_category_share)
    span = spec.weeks * 7 * 86_400
    session_start = rng.integers(0, span, n_sessions)

    views = 1 + rng.poisson(spec.views_per_session, n_sessions)
    view_session = np.repeat(np.arange(n_sessions), views)
    n_views = view_session.size
    view_user = session_user[view_session]
    view_segment = np.minimum((segment_cdf[view_user] < rng.random((n_views, 1))).sum(axis=1), spec.segments - 1)
    view_cell = session_category[view_session] * spec.segments + view_segment
    slot = np.searchsorted(world.cell_cdf, view_cell + rng.random(n_views), side="right")
    view_item = world.cell_items[np.minimum(slot, world.cell_items.size - 1)]
    slot = np.searchsorted(world.category_cdf, session_category[view_session] + rng.random(n_views))
    explored_item = world.category_items[np.minimum(slot, world.category_items.size - 1)]
    view_item = np.where(explore[view_session], explored_item, view_item)
    within = np.cumsum(rng.integers(10, 180, n_views))
    offset_in_session = within - np.repeat(within[np.cumsum(views) - views], views)
    view_time = session_start[view_session] + offset_in_session

    clicked = rng.random(n_views) < spec.p_click
    carted = clicked & (rng.random(n_views) < spec.p_cart)
    bought = carted & (rng.random(n_views) < spec.p_purchase)
    # the four event kinds one after the other (value drawn per kind in this order), then one stable sort by
    # (timestamp, user): numpy's lexsort, the same order as a stable pandas sort_values, at a fraction of the cost
    indices, kinds, delays, values = [], [], [], []
    for kind, (mask, delay) in enumerate(((np.ones_like(clicked), 0), (clicked, 5), (carted, 40), (bought, 120))):
        idx = np.flatnonzero(mask)
        indices.append(idx)
        kinds.append(np.full(idx.size, kind, dtype=np.int8))
        delays.append(np.full(idx.size, delay, dtype=np.int64))
        values.append(np.round(rng.exponential(30.0, idx.size), 1))
    idx = np.concatenate(indices)
    seconds = view_time[idx] + np.concatenate(delays)
    user = view_user[idx] + first_user + USER_ID_OFFSET
    order = np.lexsort((user, seconds))
    idx = idx[order]
    event_type = pa.DictionaryArray.from_arrays(pa.array(np.concatenate(kinds)[order]), pa.array(EVENT_TYPES))
    events = pd.DataFrame({
        "user_id": pd.array(user[order], dtype="Int64"),
        "item_id": (view_item[idx] + ITEM_ID_OFFSET).astype(np.int64),
        "event_type": pd.arrays.ArrowStringArray(event_type.cast(pa.large_string())),
        "timestamp": (START.to_datetime64().astype("datetime64[ns]")
                      + seconds[order].astype("timedelta64[s]")).astype("datetime64[ns]"),
        "session_id": (view_session[idx] + first_session).astype(np.int64),
        "value": np.concatenate(values)[order],
    })
    if spec.search_share > 0:
        first_view = np.cumsum(views) - views  # (S,) each session's first view
        events = _with_searches(events, spec, world, number, session_user + first_user, session_category,
                                view_segment[first_view], session_start, first_session)
    return _add_noise(events, spec, rng)


def _with_searches(events: pd.DataFrame, spec: SyntheticSpec, world: World, number: int, session_user: np.ndarray,
                   session_category: np.ndarray, session_segment: np.ndarray, session_start: np.ndarray,
                   first_session: int) -> pd.DataFrame:
    """The events with a search row at the start of each session picked with probability ``search_share``, plus
    int(dirty_fraction * searches) copies with an empty query; a ``query`` column; sorted by (timestamp, user_id)
    again. ``session_user`` (S,) user indices, ``session_category``/``session_segment``/``session_start`` (S,)."""
    rng = np.random.default_rng([spec.seed, 5, number])
    searched = np.flatnonzero(rng.random(session_user.size) < spec.search_share)
    names = np.char.lower(category_names(world.categories).astype(str)).astype(object)
    styles = np.asarray(STYLE_WORDS, dtype=object)[session_segment[searched] % len(STYLE_WORDS)]
    category = names[session_category[searched]]
    query = np.where(rng.random(searched.size) < CATEGORY_ONLY_QUERIES, category, styles + " " + category)
    searches = pd.DataFrame({
        "user_id": pd.array(session_user[searched] + USER_ID_OFFSET, dtype="Int64"),
        "item_id": pd.array(np.full(searched.size, None), dtype="Int64"),
        "event_type": pd.array(np.full(searched.size, SEARCH_EVENT, dtype=object), dtype=events["event_type"].dtype),
        "timestamp": (START.to_datetime64().astype("datetime64[ns]")
                      + session_start[searched].astype("timedelta64[s]")).astype("datetime64[ns]"),
        "session_id": (searched + first_session).astype(np.int64),
        "value": np.full(searched.size, np.nan),
        "query": pd.array(query, dtype="string"),
    })
    n_empty = int(spec.dirty_fraction * searched.size)
    if n_empty:
        empty = searches.iloc[rng.choice(searched.size, n_empty, replace=False)].assign(query="")
        searches = pd.concat([searches, empty], ignore_index=True)
    events = events.assign(item_id=events["item_id"].astype("Int64"), query=pd.array([None] * len(events),
                                                                                     dtype="string"))
    merged = pd.concat([events, searches], ignore_index=True)
    order = np.lexsort((merged["user_id"].to_numpy(dtype=np.int64), merged["timestamp"].to_numpy()))
    return merged.take(order).reset_index(drop=True)


def _add_noise(events: pd.DataFrame, spec: SyntheticSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Append int(duplicate_fraction·n) exact duplicates, then int(dirty_fraction·n) dirty copies (null user,
    unknown event type 'hover' or missing timestamp, a third each on average)."""
    n = len(events)
    n_dup = int(spec.duplicate_fraction * n)
    if n_dup:
        events = pd.concat([events, events.iloc[rng.choice(n, n_dup, replace=False)]], ignore_index=True)
    n_dirty = int(spec.dirty_fraction * n)
    if n_dirty:
        dirty = events.iloc[rng.choice(n, n_dirty, replace=False)].copy()
        kind = rng.integers(0, 3, n_dirty)
        dirty.loc[kind == 0, "user_id"] = pd.NA
        dirty.loc[kind == 1, "event_type"] = "hover"
        dirty.loc[kind == 2, "timestamp"] = pd.NaT
        events = pd.concat([events, dirty], ignore_index=True)
    return events
