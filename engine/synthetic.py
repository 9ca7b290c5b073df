"""The embedded default: a deterministic synthetic e-commerce behaviour log.

The generative story (all draws from ``numpy.random.Generator`` seeded per user chunk):

* Items live in (category, segment) cells; item popularity follows a power law p_i ∝ r_i^-alpha over a
  random popularity rank r_i. The catalogue has category, price (log-normal per category), title,
  created_at and in_stock; a few items are brand new (created in the last days, never interacted with).
* Each user has sparse tastes over categories (Dirichlet with small concentration) and over segments,
  and an activity level (log-normal number of sessions).
* A session picks a category from the user's taste (or explores by global popularity), views
  1 + Poisson(views) items drawn from the user's preferred segment by popularity, and runs the funnel
  view -> click -> cart -> purchase with fixed conversion probabilities. Timestamps spread over
  ``weeks`` weeks; events inside a session are seconds to minutes apart.
* Optionally a small share of dirty rows (null user, unknown event type, missing timestamp) and exact
  duplicates, so the demo exercises quarantine and de-duplication.

Events are written as a partitioned Parquet dataset through dask (one partition per user chunk), the
catalogue as one Parquet file. The same seed gives the same files.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

USER_ID_OFFSET = 1_000_000
ITEM_ID_OFFSET = 500_000
START = pd.Timestamp("2026-09-01")
ADJECTIVES = ["Classic", "Urban", "Eco", "Smart", "Deluxe", "Compact", "Vintage", "Pro", "Soft", "Bold"]


@dataclass(frozen=True)
class SyntheticSpec:
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


@dataclass(frozen=True)
class _World:
    item_cell: np.ndarray  # (I,) cell id = category * segments + segment
    item_category: np.ndarray
    cell_cdf: np.ndarray  # (I,) sorted by cell: cell id + cumulative popularity share in the cell
    cell_items: np.ndarray  # (I,) item index in cdf order
    category_cdf: np.ndarray  # same, per category (for exploration by popularity)
    category_items: np.ndarray
    global_category_share: np.ndarray


def _categories(spec: SyntheticSpec) -> int:
    return max(2, min(spec.categories, spec.items // (4 * spec.segments)))


def _stacked_cdf(groups: np.ndarray, weights: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """For sampling inside a group g: searchsorted(cdf, g + u) with u ~ U[0, 1)."""
    order = np.lexsort((np.arange(groups.size), groups))
    g, w = groups[order], weights[order]
    totals = np.bincount(g, weights=w, minlength=n_groups)
    within = np.cumsum(w) - np.repeat(np.cumsum(totals) - totals, np.bincount(g, minlength=n_groups))
    cdf = g + within / totals[g]
    return cdf, order


def make_catalogue(spec: SyntheticSpec) -> tuple[pd.DataFrame, _World]:
    rng = np.random.default_rng([spec.seed, 0])
    n_cat = _categories(spec)
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
    titles = [
        f"{ADJECTIVES[a]} {n}-{i}" for i, (a, n) in enumerate(
            zip(rng.integers(0, len(ADJECTIVES), spec.items), category_names(n_cat)[category], strict=True)
        )
    ]
    catalogue = pd.DataFrame(
        {
            "item_id": np.arange(spec.items, dtype=np.int64) + ITEM_ID_OFFSET,
            "category": category_names(n_cat)[category],
            "segment": (cell % spec.segments).astype(np.int64),
            "price": price,
            "title": titles,
            "created_at": created.astype("datetime64[ns]"),
            "in_stock": rng.random(spec.items) > 0.05,
        }
    )
    cell_cdf, cell_items = _stacked_cdf(cell, popularity, n_cells)
    category_cdf, category_items = _stacked_cdf(category, popularity, n_cat)
    share = np.bincount(category, weights=popularity, minlength=n_cat)
    world = _World(cell, category, cell_cdf, cell_items, category_cdf, category_items, share / share.sum())
    return catalogue, world


def category_names(n: int) -> np.ndarray:
    base = ["Shoes", "Books", "Garden", "Kitchen", "Toys", "Audio", "Beauty", "Sports", "Outdoor", "Pets",
            "Office", "Games", "Baby", "Tools", "Lighting", "Jewelry", "Bags", "Coffee", "Grocery", "Phones",
            "Cameras", "Bikes", "Art", "Music"]
    return np.array([base[i % len(base)] + ("" if i < len(base) else f" {i // len(base) + 1}") for i in range(n)])


def _generate_chunk(
    chunk: tuple[int, int], spec: SyntheticSpec, world: _World, sessions_per_user: float
) -> pd.DataFrame:
    first_user, last_user = chunk
    rng = np.random.default_rng([spec.seed, 1, first_user])
    n_users = last_user - first_user
    n_cat = world.global_category_share.size
    taste = rng.dirichlet(np.full(n_cat, spec.taste_concentration) + 1e-3, size=n_users)
    segment_pref = rng.dirichlet(np.full(spec.segments, 0.3), size=n_users)
    activity = np.exp(rng.normal(0.0, 0.8, n_users))
    sessions = 1 + rng.poisson(sessions_per_user * activity / np.exp(0.32))
    session_user = np.repeat(np.arange(n_users), sessions)
    n_sessions = session_user.size
    taste_cdf = np.cumsum(taste, axis=1)
    session_category = (taste_cdf[session_user] < rng.random((n_sessions, 1))).sum(axis=1)
    session_category = np.minimum(session_category, n_cat - 1)
    explore = rng.random(n_sessions) < spec.explore
    session_category[explore] = rng.choice(n_cat, size=int(explore.sum()), p=world.global_category_share)
    span = spec.weeks * 7 * 86_400
    session_start = rng.integers(0, span, n_sessions)

    views = 1 + rng.poisson(spec.views_per_session, n_sessions)
    view_session = np.repeat(np.arange(n_sessions), views)
    view_user = session_user[view_session]
    segment_cdf = np.cumsum(segment_pref, axis=1)
    view_segment = np.minimum((segment_cdf[view_user] < rng.random((view_session.size, 1))).sum(axis=1),
                              spec.segments - 1)
    view_cell = session_category[view_session] * spec.segments + view_segment
    slot = np.searchsorted(world.cell_cdf, view_cell + rng.random(view_session.size), side="right")
    view_item = world.cell_items[np.minimum(slot, world.cell_items.size - 1)]
    by_popularity = explore[view_session]
    slot = np.searchsorted(world.category_cdf, session_category[view_session] + rng.random(view_session.size))
    explored_item = world.category_items[np.minimum(slot, world.category_items.size - 1)]
    view_item = np.where(by_popularity, explored_item, view_item)
    within = np.cumsum(rng.integers(10, 180, view_session.size))
    offset_in_session = within - np.repeat(within[np.cumsum(views) - views], views)
    view_time = session_start[view_session] + offset_in_session

    clicked = rng.random(view_session.size) < spec.p_click
    carted = clicked & (rng.random(view_session.size) < spec.p_cart)
    bought = carted & (rng.random(view_session.size) < spec.p_purchase)
    frames = []
    for event, mask, delay in (("view", np.ones_like(clicked), 0), ("click", clicked, 5),
                               ("cart", carted, 40), ("purchase", bought, 120)):
        idx = np.flatnonzero(mask)
        frames.append(pd.DataFrame({
            "user_id": view_user[idx] + first_user + USER_ID_OFFSET,
            "item_id": view_item[idx] + ITEM_ID_OFFSET,
            "event_type": event,
            "timestamp": START + pd.to_timedelta(view_time[idx] + delay, unit="s"),
            "session_id": view_session[idx] + first_user * 1000,
            "value": np.round(rng.exponential(30.0, idx.size), 1),
        }))
    events = pd.concat(frames, ignore_index=True)
    events = events.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    events["user_id"] = events["user_id"].astype("Int64")
    events["event_type"] = events["event_type"].astype("string")
    events["timestamp"] = events["timestamp"].astype("datetime64[ns]")
    events = _add_noise(events, spec, rng)
    return events


def _add_noise(events: pd.DataFrame, spec: SyntheticSpec, rng: np.random.Generator) -> pd.DataFrame:
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


def _sessions_per_user(spec: SyntheticSpec) -> float:
    views = 1 + spec.views_per_session
    per_view = 1 + spec.p_click * (1 + spec.p_cart * (1 + spec.p_purchase))
    return max(0.0, spec.events / (spec.users * views * per_view) - 1)


def generate(out_dir: str | os.PathLike[str], spec: SyntheticSpec | None = None) -> dict[str, object]:
    """Write ``out_dir/events/`` (partitioned Parquet) and ``out_dir/items.parquet``; return a summary.

    Files are written to a temporary sibling directory and renamed into place, so a killed run never
    leaves a half-written input behind.
    """
    spec = spec or SyntheticSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    catalogue, world = make_catalogue(spec)
    chunks = [(u, min(u + spec.users_per_partition, spec.users))
              for u in range(0, spec.users, spec.users_per_partition)]
    per_user = _sessions_per_user(spec)
    meta = _generate_chunk((0, 1), SyntheticSpec(**{**asdict(spec), "dirty_fraction": 0,
                                                     "duplicate_fraction": 0}), world, 0.0).iloc[:0]
    events = dd.from_map(_generate_chunk, chunks, spec=spec, world=world, sessions_per_user=per_user,
                         meta=meta, enforce_metadata=False)
    tmp_events = out / ".events.tmp"
    shutil.rmtree(tmp_events, ignore_errors=True)
    with dask.config.set(scheduler="threads"):
        events.to_parquet(tmp_events, write_index=False, write_metadata_file=False)
    catalogue_tmp = out / ".items.parquet.tmp"
    catalogue.to_parquet(catalogue_tmp, index=False)
    final_events = out / "events"
    if final_events.exists():
        shutil.rmtree(final_events)
    os.replace(tmp_events, final_events)
    os.replace(catalogue_tmp, out / "items.parquet")
    n_events = int(dd.read_parquet(final_events, columns=["user_id"]).shape[0].compute())
    summary = {"events": n_events, "users": spec.users, "items": spec.items, "partitions": len(chunks),
               "path": str(out), "seed": spec.seed}
    log.info("synthetic log: %s", summary)
    return summary
