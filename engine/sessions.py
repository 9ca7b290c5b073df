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
from homerank.engine.sorted_events import event_codes, runs_of, starts_of_runs

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


def _last_session_start(user_of_row: np.ndarray, users: int, times: np.ndarray, gap: int) -> np.ndarray:
    """Without session ids: each user's last session start S_u (U,) int64 ns, the time of the user's last event that
    follows a gap > ``gap`` ns (else the user's first event). The user's events are put in time order by one stable
    argsort of the int64 key user * (span / r + 1) + (t - t_min) / r, r the smallest whole number of nanoseconds that
    keeps the key below 2^62 (1 ns for most partitions; ties within r keep the input order) -- one key, not a
    lexsort of two, and the ETL's partitions arrive in user order (runs for the sort to merge). Every event at or
    after S_u is in the last session, so the session is the rows with t >= S_u."""
    low = int(times.min())
    span = int(times.max()) - low
    resolution = max(1, -(-(users * (span + 1)) // 2**62))
    order = np.argsort(user_of_row * (span // resolution + 1) + (times - low) // resolution, kind="stable")
    user_sorted, time_sorted = user_of_row[order], times[order]
    starts = np.ones(order.size, dtype=bool)
    starts[1:] = (user_sorted[1:] != user_sorted[:-1]) | (np.diff(time_sorted) > gap)
    start_time = np.where(starts, time_sorted, np.iinfo(np.int64).min)
    return np.maximum.reduceat(start_time, np.flatnonzero(np.r_[True, user_sorted[1:] != user_sorted[:-1]]))


def _session_keys(ids: pd.Series) -> np.ndarray:
    """(N,) array whose equal entries are equal session ids, missing ids all equal: integer ids as they are (no hash
    pass), other ids by ``factorize`` (missing: code -1)."""
    if pd.api.types.is_integer_dtype(ids.dtype):
        return ids.to_numpy(dtype=np.int64, na_value=np.iinfo(np.int64).min)
    return pd.factorize(ids)[0]


def _in_last_session(events: pd.DataFrame, user_of_row: np.ndarray, first_rows: np.ndarray, times: np.ndarray,
                     gap_minutes: float) -> np.ndarray:
    """(N,) bool: the rows of each user's last session (module docstring). With session ids no sort is needed: the
    user's newest event (the last of equal times in the input order) names the session; missing ids are one
    session."""
    if schema.SESSION in events.columns and events[schema.SESSION].notna().any():
        sessions = _session_keys(events[schema.SESSION])
        rows = np.arange(times.size)
        newest = np.maximum.reduceat(times, first_rows)[user_of_row] == times
        newest_row = np.maximum.reduceat(np.where(newest, rows, -1), first_rows)  # (U,)
        return sessions == sessions[newest_row][user_of_row]
    start = _last_session_start(user_of_row, first_rows.size, times, int(gap_minutes * 60 * 1e9))
    return times >= start[user_of_row]


def last_session_items(events: Any, event_types: list[str], gap_minutes: float) -> pd.DataFrame:
    """The items of each user's last session that were not bought in it (module docstring), for the users of
    ``events`` (one user partition, or a whole small log; any row order). Columns ``SESSION_COLUMNS``.

    Linear passes over the partition (plus one sort without session ids); only the last sessions' rows (a small
    share of a log) are then ordered by (user, item, time) and reduced per (user, item) run."""
    events = _host(events)
    if not len(events):
        return _empty(events)
    if not events[schema.USER].is_monotonic_increasing:  # the ETL's partitions are in user order already
        events = events.take(np.argsort(pd.factorize(events[schema.USER], sort=True)[0], kind="stable"))
    user_values = events[schema.USER].to_numpy()
    user_of_row, first_rows = runs_of(starts_of_runs(events[schema.USER]))
    times = events[schema.TS].to_numpy().astype("datetime64[ns]", copy=False).view(np.int64)
    rows = np.flatnonzero(_in_last_session(events, user_of_row, first_rows, times, gap_minutes))
    # the last sessions' rows in (user, item, time) order: each (user, item) pair is one run
    item_codes, items = pd.factorize(events[schema.ITEM].to_numpy()[rows], sort=True)
    user, time = user_of_row[rows], times[rows]
    codes = event_codes(events[schema.EVENT].take(rows), event_types)
    order = np.lexsort((time, item_codes, user))
    user, item_codes, time, codes = user[order], item_codes[order], time[order], codes[order]
    pair_start = np.flatnonzero(np.r_[True, (user[1:] != user[:-1]) | (item_codes[1:] != item_codes[:-1])])
    pair_end = np.r_[pair_start[1:], user.size] - 1
    purchase = event_types.index(PURCHASE) if PURCHASE in event_types else -2
    bought = np.logical_or.reduceat(codes == purchase, pair_start)
    strongest = np.maximum.reduceat(codes, pair_start)
    user_first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    session_start = np.minimum.reduceat(time, user_first)  # (users with a last session,)
    session_end = np.maximum.reduceat(time, user_first)
    user_slot = np.cumsum(np.r_[True, user[1:] != user[:-1]]) - 1  # each row's position among those users
    keep = pair_start[~bought]
    last_ts, pair_user = time[pair_end[~bought]], user[keep]
    out = np.lexsort((item_codes[keep], -last_ts, pair_user))  # user, most recent first, then item
    keep, last_ts, slot = keep[out], last_ts[out], user_slot[keep[out]]
    names = np.asarray(event_types, dtype=object)
    return pd.DataFrame({
        schema.USER: pd.array(user_values[first_rows][user[keep]], dtype=events[schema.USER].dtype),
        schema.ITEM: pd.array(np.asarray(items)[item_codes[keep]], dtype=events[schema.ITEM].dtype),
        schema.LAST_TS: last_ts.astype("datetime64[ns]"),
        schema.EVENT: pd.array(names[strongest[np.searchsorted(pair_start, keep)]], dtype="string"),
        "session_start": session_start[slot].astype("datetime64[ns]"),
        "session_end": session_end[slot].astype("datetime64[ns]"),
    })


def last_sessions_by_user(events: dd.DataFrame, event_types: list[str], gap_minutes: float) -> dd.DataFrame:
    """`last_session_items` on every user partition of ``events`` (lazy)."""
    meta = last_session_items(_host(events._meta), event_types, gap_minutes)
    return events.map_partitions(last_session_items, event_types, gap_minutes, meta=meta)
