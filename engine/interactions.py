"""Interactions: weight each event, optionally decay it with age, and aggregate to one weighted edge per
(user, item).

For an event e of type t(e) at time ts(e), with reference time T (the newest event of the log):

    w(e)   = weights[t(e)] * 0.5 ** ((T - ts(e)) / half_life)      (no decay when half_life is None)
    w_ui   = sum of w(e) over the events of user u on item i
    n_t,ui = number of events of type t (e.g. ``n_purchase``), first_ts / last_ts = min / max ts.
"""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd

from homerank.engine import schema
from homerank.engine.errors import HomerankError

SECONDS_PER_DAY = 86_400.0


def _is_dask_frame(frame: Any) -> bool:
    """Whether ``frame`` is a dask DataFrame; dask is not imported for the question (a process that never imported
    dask.dataframe, e.g. the homepage stage, holds no dask frame)."""
    module = sys.modules.get("dask.dataframe")
    return module is not None and isinstance(frame, module.DataFrame)


def check_weights(weights: dict[str, float], event_types: list[str]) -> None:
    missing = [t for t in event_types if t not in weights]
    if missing:
        raise HomerankError(f"interactions.event_weights: no weight for event type {missing[0]!r}")


def half_life_decay(ref_time: Any, timestamps: Any, half_life_days: float) -> Any:
    """0.5 ** (age_days / half_life_days) with age = ref_time - timestamps, for a pandas, cuDF or dask series."""
    age_days = (ref_time - timestamps).dt.total_seconds() / SECONDS_PER_DAY
    return 0.5 ** (age_days / half_life_days)


def weight_events(frame: Any, weights: dict[str, float], half_life_days: float | None, ref_time: Any) -> Any:
    """Add a ``weight`` column to an event frame (pandas, cudf or dask) following the module formula."""
    base = frame[schema.EVENT].map(weights, meta=(schema.EVENT, "float64")) if _is_dask_frame(frame) else (
        frame[schema.EVENT].map(weights)
    )
    base = base.astype("float64")
    if half_life_days is not None:
        base = base * half_life_decay(ref_time, frame[schema.TS], half_life_days)
    return frame.assign(**{schema.WEIGHT: base})


def _with_type_counts(frame: Any, event_types: list[str]) -> Any:
    return frame.assign(
        **{schema.count_column(t): (frame[schema.EVENT] == t).astype("int64") for t in event_types}
    )


def aggregate_edges(events: Any, event_types: list[str]) -> Any:
    """Group weighted events to one row per (user_id, item_id).

    Returns columns user_id, item_id, weight (sum), first_ts (min), last_ts (max), n_<type> (counts).
    Works on pandas/cudf frames and lazily on dask frames.
    """
    counted = _with_type_counts(events, event_types)
    spec: dict[str, tuple[str, str]] = {
        schema.WEIGHT: (schema.WEIGHT, "sum"),
        schema.FIRST_TS: (schema.TS, "min"),
        schema.LAST_TS: (schema.TS, "max"),
    }
    spec.update({schema.count_column(t): (schema.count_column(t), "sum") for t in event_types})
    grouped = counted.groupby([schema.USER, schema.ITEM], sort=False)
    if _is_dask_frame(counted):
        aggregated = grouped.agg(**spec, split_out=1 if counted.npartitions <= 16 else counted.npartitions // 8)
    else:
        aggregated = grouped.agg(**spec)
    return aggregated.reset_index()


def sort_edges(edges: pd.DataFrame) -> pd.DataFrame:
    """Deterministic order (user, item) so reruns give identical tables."""
    return edges.sort_values([schema.USER, schema.ITEM], kind="stable").reset_index(drop=True)
