"""Each user's last session and the items in it that were not bought: the "continue where you left off" signal,
computed on the ETL's user partitions (every event of a user is in one partition, so it is local).

A user's events e_1..e_n in time order (ties: the partition's (item, time) order) fall into sessions:

    with session_id   the session of the user's newest event is the last session: the events with its session_id
    without it        a new session starts at e_1 and wherever ts(e_k) - ts(e_{k-1}) > gap; the last one runs from
                      the last such start to e_n

For the events of the last session, per item i:

    last_ts         the newest event on i in the session
    event_type      the strongest event type on i in the session (the latest in ``ingest.event_types``: with the
                    default funnel view < click < cart < purchase)
    session_start / session_end   the first and the last event of the session (any item)

Items with a ``purchase`` in the session are left out (they were bought: nothing to continue). Rows are in
(user, last_ts descending, item) order: the most recent item first. Searches are not events: a visit with only
searches is not a session here.
"""

from __future__ import annotations

from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.sorted_events import _event_codes

PURCHASE = "purchase"
SESSION_COLUMNS = (schema.USER, schema.ITEM, schema.LAST_TS, schema.EVENT, "session_start", "session_end")


def _host(frame: Any) -> pd.DataFrame:
    return frame.to_pandas() if hasattr(frame, "to_pandas") else frame


def _empty(events: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({schema.USER: events[schema.USER].iloc[:0], schema.ITEM: events[schema.ITEM].iloc[:0],
                         schema.LAST_TS: pd.Series(dtype="datetime64[ns]"),
                         schema.EVENT: pd.Series(dtype="string"),
                         "session_start": pd.Series(dtype="datetime64[ns]"),
                         "session_end": pd.Series(dtype="datetime64[ns]")})


def _by_user_and_time(user_codes: np.ndarray, users: int, times: np.ndarray) -> np.ndarray:
    """The rows in (user, time) order: one stable argsort of the int64 key user * (span / r + 1) + (t - t_min) / r,
    with r the smallest whole number of nanoseconds that keeps the key below 2^62 (1 ns for most partitions, tens of
    ns for a large one over years: ties within r keep the input order). A sort of one key, not a lexsort of two:
    the input is sorted by user already in the ETL (runs for the sort to merge), so it is about ten times faster."""
    if not times.size:
        return np.zeros(0, dtype=np.int64)
    low = int(times.min())
    span = int(times.max()) - low
    resolution = max(1, -(-(users * (span + 1)) // 2**62))
    key = user_codes.astype(np.int64) * (span // resolution + 1) + (times - low) // resolution
    return np.argsort(key, kind="stable")


def last_session_items(events: Any, event_types: list[str], gap_minutes: float) -> pd.DataFrame:
    """The items of each user's last session that were not bought in it (module docstring), for the users of
    ``events`` (one user partition, or a whole small log; any row order). Columns ``SESSION_COLUMNS``."""
    events = _host(events)
    if not len(events):
        return _empty(events)
    user_codes, users = pd.factorize(events[schema.USER], sort=True)
    times = events[schema.TS].to_numpy().astype("datetime64[ns]").astype(np.int64)
    order = _by_user_and_time(user_codes, len(users), times)
    user_sorted, time_sorted = user_codes[order], times[order]
    last_row = np.flatnonzero(np.r_[user_sorted[1:] != user_sorted[:-1], True])  # (U,) each user's newest event
    if schema.SESSION in events.columns and events[schema.SESSION].notna().any():
        session = pd.factorize(events[schema.SESSION])[0][order]  # missing ids share code -1: one session
    else:
        gap = np.int64(gap_minutes * 60 * 1e9)
        starts = np.r_[True, (user_sorted[1:] != user_sorted[:-1]) | (np.diff(time_sorted) > gap)]
        session = np.cumsum(starts)
    in_last = session == session[last_row][user_sorted]
    rows = order[in_last]
    codes = np.asarray(_event_codes(events[schema.EVENT], event_types))[rows]
    chosen = pd.DataFrame({schema.USER: user_codes[rows], schema.ITEM: events[schema.ITEM].to_numpy()[rows],
                           schema.TS: times[rows], "code": codes,
                           "bought": codes == (event_types.index(PURCHASE) if PURCHASE in event_types else -2)})
    bounds = chosen.groupby(schema.USER, sort=False)[schema.TS].agg(["min", "max"])
    items = chosen.groupby([schema.USER, schema.ITEM], sort=False).agg(
        last_ts=(schema.TS, "max"), code=("code", "max"), bought=("bought", "max")).reset_index()
    items = items[~items["bought"].to_numpy(dtype=bool)]
    items = items.sort_values([schema.USER, schema.LAST_TS, schema.ITEM], ascending=[True, False, True],
                              kind="stable")
    user_rows = items[schema.USER].to_numpy()
    names = np.asarray(event_types, dtype=object)
    return pd.DataFrame({
        schema.USER: users.take(user_rows),
        schema.ITEM: items[schema.ITEM].to_numpy(),
        schema.LAST_TS: items[schema.LAST_TS].to_numpy().astype("datetime64[ns]"),
        schema.EVENT: pd.array(names[items["code"].to_numpy()], dtype="string"),
        "session_start": bounds["min"].reindex(user_rows).to_numpy().astype("datetime64[ns]"),
        "session_end": bounds["max"].reindex(user_rows).to_numpy().astype("datetime64[ns]"),
    }).astype({schema.ITEM: events[schema.ITEM].dtype})


def last_sessions_by_user(events: dd.DataFrame, event_types: list[str], gap_minutes: float) -> dd.DataFrame:
    """`last_session_items` on every user partition of ``events`` (lazy)."""
    meta = last_session_items(_host(events._meta), event_types, gap_minutes)
    return events.map_partitions(last_session_items, event_types, gap_minutes, meta=meta)
