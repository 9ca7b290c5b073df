"""Per-user temporal split: the newest items of each user go to test, the ones before them to validation.

A user's distinct items are ordered by the time they first interacted with them (``first_ts``, ties by
item index). With n items, ``test`` = N (int) or round(f * n) (float, at least 1 when f > 0) of the newest,
``valid`` likewise among the rest; both are capped so at least ``min_train`` items stay in training.

No future leaks: the user's *cutoff* is the first time of their earliest held-out item; training edges are
re-aggregated from that user's events at or before the cutoff (`train_event_filter`), so an item bought
again after the cutoff does not carry the later events into training weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.config import SplitConfig
from homerank.engine.sorted_events import array_module, time_steps

SPLIT = "split"
CUTOFF = "cutoff"
SPLIT_NAMES = ["train", "valid", "test"]  # label codes 0, 1, 2
SPLIT_DTYPE = pd.CategoricalDtype(SPLIT_NAMES)
NO_CUTOFF = np.iinfo(np.int64).max  # the cutoff of a user with nothing held out: every event counts


def holdout_size(spec: int | float, n: np.ndarray) -> np.ndarray:
    if isinstance(spec, bool):  # pragma: no cover - pydantic rejects bools for these fields
        raise TypeError("split size must be int or float")
    if isinstance(spec, int):
        return np.full_like(n, spec)
    if spec <= 0:
        return np.zeros_like(n)
    return np.maximum(1, np.floor(spec * n + 0.5).astype(n.dtype))


def temporal_split(edges: pd.DataFrame, config: SplitConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Assign each encoded edge to "train" / "valid" / "test".

    Args:
        edges: one row per (user_index, item_index) with ``first_ts``.
    Returns:
        (edges with a ``split`` column, cutoffs: user_index, cutoff for users with any held-out item).
    """
    ordered = edges.sort_values([schema.USER_INDEX, schema.FIRST_TS, schema.ITEM_INDEX], kind="stable")
    ordered = ordered.reset_index(drop=True)
    users = ordered[schema.USER_INDEX].to_numpy()
    position = ordered.groupby(schema.USER_INDEX, sort=False).cumcount().to_numpy()
    n_per_user = ordered.groupby(schema.USER_INDEX, sort=False)[schema.ITEM_INDEX].transform("size").to_numpy()
    n_test = np.minimum(holdout_size(config.test, n_per_user), np.maximum(n_per_user - config.min_train, 0))
    room = np.maximum(n_per_user - config.min_train - n_test, 0)
    n_valid = np.minimum(holdout_size(config.valid, n_per_user), room)
    from_end = n_per_user - 1 - position
    split = np.where(from_end < n_test, "test", np.where(from_end < n_test + n_valid, "valid", "train"))
    ordered[SPLIT] = pd.Categorical(split, categories=["train", "valid", "test"])
    held = ordered[ordered[SPLIT] != "train"]
    cutoffs = held.groupby(schema.USER_INDEX, as_index=False)[schema.FIRST_TS].min()
    cutoffs = cutoffs.rename(columns={schema.FIRST_TS: CUTOFF})
    del users
    return ordered, cutoffs


def order_by_user_then_time(user_codes: Any, item_codes: Any, first_ns: Any) -> Any:
    """Permutation sorting by (user, first time, item). When the input is already in (user, item) order (the
    partitions' order), a stable sort keeps the items' order among equal times, so only (user, time) is sorted:
    on the CPU, times as steps of their greatest common step g from the earliest t_0 make one int64 key
    ``u * R + (t - t_0) / g`` (R: the number of steps; logs stamped in seconds give g >= 10^9) when U * R < 2^63,
    one stable argsort; else two stable argsorts of (E,) int64 keys. Input in another order: a three-key lexsort.
    Any integer dtypes (codes are widened to int64 before they are combined)."""
    xp = array_module(user_codes)
    if len(user_codes) < 2 or bool(((user_codes[1:] > user_codes[:-1])
                                    | ((user_codes[1:] == user_codes[:-1]) & (item_codes[1:] > item_codes[:-1]))
                                    ).all()):
        found = time_steps(first_ns) if xp is np else None
        if found is not None:
            steps, span = found
            if (int(user_codes.max()) + 1) * span < 2**63:
                key = user_codes.astype(np.int64)  # u * R + step, built in place: two (E,) int64 arrays, not four
                key *= span
                key += steps
                del steps
                return np.argsort(key, kind="stable")
        by_time = xp.argsort(first_ns, kind="stable")
        users = user_codes[by_time]
        if xp is np and len(users) and int(users.max()) < 2**16:  # NumPy's stable sort is a radix sort on 16 bits
            users = users.astype(np.uint16)
        return by_time[xp.argsort(users, kind="stable")]
    return xp.lexsort(xp.stack([item_codes, first_ns, user_codes]))


def split_labels(user_codes: Any, item_codes: Any, first_ns: Any, num_users: int, config: SplitConfig
                 ) -> tuple[Any, Any]:
    """The split of `temporal_split` on arrays, without reordering anything: one lexsort of E edges.

    Args:
        user_codes: (E,) int64 in 0..U-1; item_codes: (E,) int64, the tie-break (item index order);
        first_ns: (E,) int64 first interaction time (ns); NumPy or CuPy arrays.
    Returns:
        (labels (E,) int8 in the input order: 0 train, 1 valid, 2 test; cutoffs (U,) int64: the first time of
        the user's earliest held-out item, `NO_CUTOFF` for a user with nothing held out).
    """
    xp = array_module(user_codes)
    edges = len(user_codes)
    order = order_by_user_then_time(user_codes, item_codes, first_ns)
    per_user = xp.bincount(user_codes, minlength=num_users).astype(xp.int64)
    starts = xp.cumsum(per_user) - per_user
    n_test = xp.minimum(holdout_size(config.test, per_user), xp.maximum(per_user - config.min_train, 0))
    room = xp.maximum(per_user - config.min_train - n_test, 0)
    n_valid = xp.minimum(holdout_size(config.valid, per_user), room)
    users = user_codes[order]
    from_end = per_user[users] - 1 - (xp.arange(edges, dtype=xp.int64) - starts[users])
    ranked = xp.where(from_end < n_test[users], 2, xp.where(from_end < (n_test + n_valid)[users], 1, 0))
    labels = xp.empty(edges, dtype=xp.int8)
    labels[order] = ranked.astype(xp.int8)
    held = n_test + n_valid
    first_held = xp.minimum(starts + per_user - held, max(edges - 1, 0))
    ordered_first = first_ns[order]
    cutoffs = xp.where(held > 0, ordered_first[first_held] if edges else held, NO_CUTOFF).astype(xp.int64)
    return labels, cutoffs


def train_event_filter(events: pd.DataFrame, train_keys: pd.DataFrame) -> pd.DataFrame:
    """Keep the events of training edges that happened at or before the user's cutoff.

    ``train_keys`` has user_id, item_id and ``cutoff`` (NaT = user has no held-out items: keep all).
    Works on pandas/cudf and dask frames alike.
    """
    joined = events.merge(train_keys, on=[schema.USER, schema.ITEM], how="inner")
    keep = joined[CUTOFF].isna() | (joined[schema.TS] <= joined[CUTOFF])
    return joined[keep].drop(columns=[CUTOFF])
