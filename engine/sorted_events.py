"""Array kernels on one user partition of events kept sorted by (user, item, time): exact de-duplication, the
per-(user, item) aggregation and the alignment of two edge tables, each a sort or a linear pass.

The ETL's partitions hold every event of their users (`homerank.engine.partitioned`). Inside a partition the
events are put once in the order

    (user, item, timestamp, event code, session, value)

after which an exact duplicate sits right after its twin (one comparison with the previous row), and the events
of one (user, item) pair form a run: with g(e) the run of event e and s_g, e_g the first and last row of run g,

    weight_g  = sum_{g(e) = g} w(e)                  (bincount with weights)
    n_t,g     = #{e : g(e) = g, t(e) = t}            (bincount of g * T + code(e))
    first_ts_g = ts(s_g),  last_ts_g = ts(e_g)       (the run is in time order)

so no hash aggregation and no multi-column sort of a data frame is needed: pandas sorts one (N,) key array, cuDF
sorts on the GPU. The pair key of the sort is ``(u - u_min) * span_i + (i - i_min)`` for integer ids whose ranges
allow it, else ``u * I_p + i`` over the ranks of ``factorize(sort=True)`` (I_p: distinct items of the partition; an
int64 because U_p * I_p <= N_p^2 < 2^63 for any partition that fits a machine). Once sorted, a run starts where
the user or the item differs from the row before (`PairRuns`): no hashing.

Works on pandas and cuDF partitions alike: the frame methods used (``factorize``, ``take``, ``astype``,
``cat.codes``, ``Index.get_indexer``) exist in both libraries and the arrays are NumPy or CuPy
(`array_module`); the cuDF branch is written from the cuDF/CuPy documentation and has never run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema

EVENT_ROWS = ("event_start", "event_stop")  # an edge's first and last row among its partition's events


def array_module(frame: Any) -> ModuleType:
    """NumPy for pandas objects and NumPy arrays, CuPy for cuDF objects and CuPy arrays."""
    if type(frame).__module__.startswith(("cudf", "cupy")):
        import cupy  # type: ignore[import-not-found]

        return cupy
    return np


def frame_library(frame: Any) -> ModuleType:
    """The data frame library of ``frame``: pandas or cudf."""
    if type(frame).__module__.startswith("cudf"):
        import cudf  # type: ignore[import-not-found]

        return cudf
    return pd


def values(series: Any) -> Any:
    """The (N,) NumPy (pandas) or CuPy (cuDF) array of a numeric series."""
    return series.values if type(series).__module__.startswith("cudf") else series.to_numpy()


def nanoseconds(series: Any) -> Any:
    """datetime64[ns] series -> (N,) int64 array of nanoseconds since the epoch."""
    return values(series.astype("int64"))


def codes_of(series: Any, sort: bool = True) -> tuple[Any, int]:
    """(codes (N,) int64, number of distinct values): ``factorize``; with ``sort`` the codes follow the values'
    order. Missing values get code -1 in both libraries, so two missing values compare equal, as in
    ``DataFrame.duplicated``."""
    codes, uniques = series.factorize(sort=sort)
    xp = array_module(series)
    return xp.asarray(codes).astype(xp.int64), len(uniques)


def pair_keys(frame: Any) -> Any:
    """(N,) int64 key of (user, item) that sorts like (user id, item id). Integer ids whose ranges multiply below
    2^62: ``(u - u_min) * span_i + (i - i_min)`` (two min/max passes); otherwise ``u * I_p + i`` over the ranks of
    ``factorize(sort=True)`` (a hash and a sort of the distinct values, e.g. for text ids)."""
    users, items = frame[schema.USER], frame[schema.ITEM]
    if len(users) and _is_integer(users) and _is_integer(items):
        xp = array_module(users)
        u, i = values(users), values(items)
        u_min, i_min = int(u.min()), int(i.min())
        span_u, span_i = int(u.max()) - u_min + 1, int(i.max()) - i_min + 1
        if span_u * span_i < 2**62:
            return (u - u_min).astype(xp.int64) * span_i + (i - i_min).astype(xp.int64)
    user_codes, _ = codes_of(users)
    item_codes, n_items = codes_of(items)
    return user_codes * max(n_items, 1) + item_codes


def _is_integer(series: Any) -> bool:
    return str(series.dtype) in ("int64", "int32", "int16", "int8", "uint32", "uint16", "uint8")


def starts_of_runs(series: Any) -> Any:
    """(N,) bool: True where the value differs from the row before (and at row 0): the first rows of the runs of
    equal values of a sorted column. Integer columns compare their arrays; others compare through the frame
    library (text ids, pandas or cuDF)."""
    if _is_integer(series):
        xp = array_module(series)
        column = values(series)
        change = xp.ones(len(column), dtype=bool)
        if len(column):
            change[1:] = column[1:] != column[:-1]
        return change
    previous = series.shift(1)
    return values(series.ne(previous).fillna(True).astype(bool))


@dataclass
class PairRuns:
    """The (user, item) runs of events in (user, item, time) order: run_of (N,) each event's run; starts (G,),
    ends (G,) the first and last row of each run. A run starts where the user or the item changes from the row
    before: one comparison per row, no hashing."""

    run_of: Any
    starts: Any
    ends: Any

    @classmethod
    def of(cls, events: Any) -> PairRuns:
        xp = array_module(events)
        run_of, starts = runs_of(starts_of_runs(events[schema.USER]) | starts_of_runs(events[schema.ITEM]))
        ends = xp.concatenate([starts[1:], xp.asarray([len(run_of)], dtype=starts.dtype)])[:len(starts)] - 1
        return cls(run_of, starts, ends)


def run_totals(events: Any, runs_: PairRuns, event_types: list[str]) -> tuple[Any, Any]:
    """Per run g over all its events: (weight sum (G,) float64, type counts (G, T) int64). ``events`` needs
    ``weight`` and an ``event_type`` of ``event_types``."""
    xp = array_module(runs_.run_of)
    groups, width = len(runs_.starts), len(event_types)
    codes = event_codes(events[schema.EVENT], event_types)
    if len(codes) and bool((codes < 0).any()):
        raise ValueError("run_totals: an event type outside event_types")  # ingest quarantines those
    weights = values(events[schema.WEIGHT].astype("float64"))
    weight = xp.bincount(runs_.run_of, weights=weights, minlength=groups).astype(xp.float64)
    by_type = xp.bincount(runs_.run_of * width + codes, minlength=groups * width).reshape(groups, width)
    return weight, by_type.astype(xp.int64)


def sort_and_drop_duplicates(events: Any) -> Any:
    """The partition's events in (user, item, timestamp) order without exact duplicates (rows equal in every
    column; missing equals missing). Returns a frame with a fresh RangeIndex.

    One sort by (pair key, time) (`pair_time_order`), then a comparison with the previous row: twins share (user, item,
    timestamp), so only the runs of rows tied on those three (a small fraction of a log) go through the frame's
    own ``duplicated``, which compares every column exactly; the first of each set of twins is kept."""
    xp = array_module(events)
    if len(events) == 0:
        return events.reset_index(drop=True)
    pairs, times = pair_keys(events), nanoseconds(events[schema.TS])
    order = pair_time_order(pairs, times)
    pairs, times = pairs[order], times[order]
    tied = xp.zeros(len(order), dtype=bool)
    tied[1:] = (pairs[1:] == pairs[:-1]) & (times[1:] == times[:-1])
    if not bool(tied.any()):
        return events.take(order).reset_index(drop=True)
    in_run = tied.copy()
    in_run[:-1] |= tied[1:]  # the first row of a tied run too
    run_rows = xp.flatnonzero(in_run)
    twins = values(events.take(order[run_rows]).duplicated())
    drop = xp.zeros(len(order), dtype=bool)
    drop[run_rows[twins]] = True
    return events.take(order[~drop]).reset_index(drop=True)


def time_steps(times: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Times (N,) int64 ns as whole steps of their greatest common step g from the earliest t_0: ((t - t_0) / g,
    the number of steps R = (t_max - t_0) / g + 1); logs stamped in seconds give g >= 10^9, so R is small. None
    when the offsets would not fit in an int64 (or there are no times)."""
    if not len(times) or int(times.max()) - int(times.min()) >= 2**63:
        return None
    steps = times - times.min()  # the offsets, divided in place: one (N,) int64 array
    step = int(np.gcd.reduce(steps)) or 1
    if step > 1:
        steps //= step
    return steps, int(steps.max()) + 1


def pair_time_order(pairs: Any, times: Any) -> Any:
    """The permutation that sorts rows by (pair key, time), ties in row order: a stable lexsort of the two (N,) int64
    keys. On the CPU with non-negative pair keys p, one int64 key p * R + (t - t_0) / g (`time_steps`) when
    (max p + 1) * R < 2^63, sorted by one stable argsort: the same permutation, about twice as fast (1.67·10^6
    events of a 10^7-event log: 0.078 s against 0.129 s in the log's order, 0.177 s against 0.362 s shuffled)."""
    xp = array_module(pairs)
    if xp is np and len(pairs) and int(pairs.min()) >= 0:
        found = time_steps(times)
        if found is not None and (int(pairs.max()) + 1) * found[1] < 2**63:
            return np.argsort(pairs * found[1] + found[0], kind="stable")
    return xp.lexsort(xp.stack([times, pairs]))


def event_codes(series: Any, event_types: list[str] | None = None) -> Any:
    """Event type codes (N,) int64: positions in ``event_types`` when given (-1: none of them, or missing), else any
    consistent numbering. A categorical column looks up its few categories, not its rows (its codes as they are
    when the categories are exactly ``event_types``)."""
    categorical = isinstance(series.dtype, pd.CategoricalDtype) or str(series.dtype) == "category"
    if categorical and (event_types is None or list(series.cat.categories) == list(event_types)):
        return values(series.cat.codes).astype("int64")
    if event_types is None:
        return codes_of(series)[0]
    xp = array_module(series)
    names = frame_library(series).Index(event_types)
    if categorical:
        lookup = xp.asarray(names.get_indexer(series.cat.categories.astype("str"))).astype(xp.int64)
        codes = values(series.cat.codes).astype("int64")
        return xp.where(codes >= 0, lookup[xp.maximum(codes, 0)], -1)
    return xp.asarray(names.get_indexer(series.astype("str"))).astype(xp.int64)


def runs_of(change: Any) -> tuple[Any, Any]:
    """For the (N,) bool marks of `starts_of_runs`: (the run of each row (N,), the first row of each run (G,))."""
    xp = array_module(change)
    return xp.cumsum(change) - 1, xp.flatnonzero(change)


def aggregate_sorted(events: Any, event_types: list[str]) -> Any:
    """One edge per (user, item) from weighted events in (user, item, timestamp) order (the order of
    `sort_and_drop_duplicates`): user_id, item_id, weight (sum), first_ts, last_ts, n_<type> (counts), in
    (user, item) order, following the module formulas, then `EVENT_ROWS`: s_g and e_g, the first and last row
    of the edge's run in ``events`` (for `prefix_totals` on the same partition; not part of the interactions).
    ``events`` needs the ``weight`` column and an ``event_type`` whose values are ``event_types`` (categorical
    with those categories: no conversion)."""
    xp = array_module(events)
    runs_ = PairRuns.of(events)
    weight, by_type = run_totals(events, runs_, event_types)
    edges = events[[schema.USER, schema.ITEM]].take(runs_.starts).reset_index(drop=True)
    edges[schema.WEIGHT] = weight
    edges[schema.FIRST_TS] = events[schema.TS].take(runs_.starts).reset_index(drop=True)
    edges[schema.LAST_TS] = events[schema.TS].take(runs_.ends).reset_index(drop=True)
    for position, event_type in enumerate(event_types):
        edges[schema.count_column(event_type)] = xp.ascontiguousarray(by_type[:, position])
    edges[EVENT_ROWS[0]] = runs_.starts.astype(xp.int64)
    edges[EVENT_ROWS[1]] = runs_.ends.astype(xp.int64)
    return edges


def prefix_totals(events: Any, starts: Any, ends: Any, limits: Any, event_types: list[str]
                  ) -> tuple[Any, Any, Any]:
    """Totals over the time-ordered prefix of G runs of events: run g is rows s_g..e_g of ``events`` (in time
    order, as `aggregate_sorted` leaves them), and only its events e with ts(e) <= limit_g count:

        count_g = #{e in s_g..e_g : ts(e) <= limit_g},  weight_g = sum of w(e),  n_t,g = #{... and t(e) = t}

    ``starts``, ``ends``, ``limits`` (G,) int64 (limits in ns); returns (count (G,) int64, weight (G,) float64,
    type counts (G, T) int64). Linear in the rows of the runs: each run's rows are laid out once (a cumulative
    sum of run marks, no per-run loop and no search), then bincounts."""
    xp = array_module(starts)
    groups, width = len(starts), len(event_types)
    lengths = ends - starts + 1
    total = int(lengths.sum()) if groups else 0
    marks = xp.zeros(total, dtype=xp.int64)
    offsets = xp.cumsum(lengths) - lengths
    marks[offsets[1:]] = 1  # every run holds at least one event
    run_of = xp.cumsum(marks)  # (R,) the run of each laid-out row
    rows = xp.arange(total, dtype=xp.int64) - offsets[run_of] + starts[run_of]
    keep = nanoseconds(events[schema.TS])[rows] <= limits[run_of]
    rows, run_of = rows[keep], run_of[keep]
    weights = values(events[schema.WEIGHT].astype("float64"))[rows]
    codes = event_codes(events[schema.EVENT], event_types)[rows]
    if len(codes) and bool((codes < 0).any()):
        raise ValueError("prefix_totals: an event type outside event_types")  # ingest quarantines those
    count = xp.bincount(run_of, minlength=groups).astype(xp.int64)
    weight = xp.bincount(run_of, weights=weights, minlength=groups).astype(xp.float64)
    by_type = xp.bincount(run_of * width + codes, minlength=groups * width).reshape(groups, width).astype(xp.int64)
    return count, weight, by_type
