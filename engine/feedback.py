"""Feedback on a served homepage: click-through per section and position bias from a log of reactions joined to the
impressions of the run that served the pages.

An impression is one slot shown (``RUN/impressions/``: user_id, item_id, section, row, slot, run_id, served_at). A
feedback event is a row of the behaviour log that carries the impression's ``run_id``; it *matches* the impression
with the same (user_id, item_id, run_id) (a page shows an item once, so that is one impression at most). Events
without a match (another run id, an item not shown to that user) are counted and left out. For each event type t,
``t`` counts the impressions with at least one matching event of type t, so

    CTR(group) = click(group) / impressions(group)

over the impressions of a section, a slot (position within a row, 1-based; the position bias), or a row (the
section's position on the page). `summarise` states every figure. `click_through` computes them in memory (the
reference, for small frames); `feedback_stats`, which the ETL of a warm-started run calls, computes the same on the
dask cluster: per-key event counts (`event_flags`) merged to the impressions part by part, then per-group sums.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from homerank.engine import schema

RUN_ID = "run_id"
KEYS = [schema.USER, schema.ITEM, RUN_ID]
CLICK = "click"  # the event type whose share of the impressions is the click-through rate
GROUPS = ("section", "slot", "row")


def event_flags(events: pd.DataFrame, event_types: list[str]) -> pd.DataFrame:
    """Per (user_id, item_id, run_id) of ``events`` (columns KEYS + event_type, types lower-case), the number of
    events of each type (``n_<type>`` columns, int64) and of all of them (``n_events``)."""
    kinds = events[schema.EVENT]
    counts = pd.DataFrame({schema.count_column(t): (kinds == t).astype("int64") for t in event_types},
                          index=events.index)
    counts["n_events"] = 1
    return pd.concat([events[KEYS], counts], axis=1).groupby(KEYS, as_index=False, sort=False).sum()


def outcomes(impressions: pd.DataFrame, flags: pd.DataFrame, event_types: list[str]) -> pd.DataFrame:
    """``impressions`` (KEYS + section, slot, row) with, per event type, 1 when it has a matching event of that type
    (else 0), and ``matched_events``: how many events matched it."""
    return _flagged(impressions[[*KEYS, *GROUPS]].merge(flags, on=KEYS, how="left"), event_types)


def _flagged(joined: pd.DataFrame, event_types: list[str]) -> pd.DataFrame:
    """The impressions joined to their events' counts (NaN: none) -> GROUPS, 0/1 per event type, matched_events."""
    out = joined[list(GROUPS)].copy()
    for event_type in event_types:
        out[event_type] = (joined[schema.count_column(event_type)].fillna(0) > 0).astype("int64")
    out["matched_events"] = joined["n_events"].fillna(0).astype("int64")
    out["impressions"] = 1
    return out


def _table(sums: pd.DataFrame, group: str, event_types: list[str]) -> list[dict[str, Any]]:
    rows = []
    for key, row in sums.sort_index().iterrows():
        shown = int(row["impressions"])
        entry: dict[str, Any] = {group: key.item() if hasattr(key, "item") else key, "impressions": shown}
        entry.update({t: int(row[t]) for t in event_types})
        entry["ctr"] = round(int(row[CLICK]) / shown, 6) if CLICK in event_types and shown else None
        rows.append(entry)
    return rows


def summarise(sums: dict[str, pd.DataFrame], event_types: list[str]) -> dict[str, Any]:
    """The feedback figures from the per-group sums of `outcomes` (``sums[g]``: indexed by the values of group g,
    columns impressions, matched_events and one per event type):

    - ``totals``: impressions, impressions with a matching event of each type, ``ctr`` = click / impressions;
    - ``by_section``, ``by_slot``, ``by_row``: the same per section, slot and row (sorted by their value);
    - ``position_bias``: per slot, its CTR over slot 1's (1.0 at slot 1; None when slot 1 has no click)."""
    by_section = sums["section"]
    totals = by_section.sum()
    shown = int(totals["impressions"])
    out: dict[str, Any] = {
        "impressions": shown,
        "matched_events": int(totals["matched_events"]),
        "totals": {"impressions": shown, **{t: int(totals[t]) for t in event_types},
                   "ctr": round(int(totals[CLICK]) / shown, 6) if CLICK in event_types and shown else None},
    }
    for group in GROUPS:
        out[f"by_{group}"] = _table(sums[group], group, event_types)
    first = next((row["ctr"] for row in out["by_slot"] if row["slot"] == 1), None)
    out["position_bias"] = {str(row["slot"]): (round(row["ctr"] / first, 4) if first and row["ctr"] is not None
                                               else None) for row in out["by_slot"]}
    return out


def click_through(impressions: pd.DataFrame, events: pd.DataFrame, event_types: list[str]) -> dict[str, Any]:
    """`summarise` of ``events`` (KEYS + event_type) against ``impressions`` (KEYS + section, slot, row), in
    memory: the reference of `feedback_stats`, for small frames."""
    result = outcomes(impressions, event_flags(events, event_types), event_types)
    columns = ["impressions", "matched_events", *event_types]
    summary = summarise({group: result.groupby(group)[columns].sum() for group in GROUPS}, event_types)
    summary["feedback_events"] = len(events)
    summary["unmatched_events"] = len(events) - summary["matched_events"]
    return summary


def read_feedback(path: str, file_format: str, id_dtype: str, pseudonym_key: bytes | None = None) -> pd.DataFrame:
    """One feedback file's events (KEYS + event_type): ids in the run's canonical form (`canonical_ids`; user ids
    pseudonymised as the ingest does them), event types stripped and lower-case, rows with a bad id or no run id
    dropped."""
    from homerank.engine.ids import canonical_ids
    from homerank.engine.privacy import pseudonymise

    columns = [*KEYS, schema.EVENT]
    if file_format == "parquet":
        raw = pd.read_parquet(path, columns=columns)
    else:
        from homerank.engine.ingest import refuse_malformed_csv

        refuse_malformed_csv(path, "feedback log")
        raw = pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=True)
    users, bad_users = canonical_ids(raw[schema.USER], id_dtype)  # type: ignore[arg-type]
    items, bad_items = canonical_ids(raw[schema.ITEM], id_dtype)  # type: ignore[arg-type]
    run_ids = raw[RUN_ID].astype("string").str.strip()
    keep = ~(bad_users | bad_items | run_ids.isna() | (run_ids == "")).to_numpy(dtype=bool)
    if pseudonym_key is not None:
        users = pseudonymise(users, pseudonym_key)
    return pd.DataFrame({schema.USER: users[keep], schema.ITEM: items[keep], RUN_ID: run_ids[keep],
                         schema.EVENT: raw[schema.EVENT].astype("string").str.strip().str.lower()[keep]}
                        ).reset_index(drop=True)


def read_impressions(path: str, id_dtype: str) -> pd.DataFrame:
    """One part of ``impressions/`` with its ids in the run's canonical form."""
    from homerank.engine.ids import canonical_ids

    frame = pd.read_parquet(path, columns=[*KEYS, *GROUPS])
    frame[schema.USER] = canonical_ids(frame[schema.USER], id_dtype)[0]  # type: ignore[arg-type]
    frame[schema.ITEM] = canonical_ids(frame[schema.ITEM], id_dtype)[0]  # type: ignore[arg-type]
    frame[RUN_ID] = frame[RUN_ID].astype("string")
    return frame


def feedback_stats(impression_parts: list[str], feedback_files: list[tuple[str, str]], id_dtype: str,
                   event_types: list[str], pseudonym_key: bytes | None = None) -> dict[str, Any]:
    """`click_through` on the dask cluster of the running client (or dask's local scheduler): the impressions part by
    part, the feedback files (path, format) file by file; the events' per-key counts are shuffled to the
    impressions' partitions by the merge, and only the per-group sums (a few rows each) reach the client."""
    import dask
    import dask.dataframe as dd

    events = dd.from_map(read_feedback, [path for path, _ in feedback_files],
                         [file_format for _, file_format in feedback_files], id_dtype=id_dtype,
                         pseudonym_key=pseudonym_key, label="read-feedback")
    flag_meta = event_flags(events._meta, event_types)
    flags = events.map_partitions(event_flags, event_types, meta=flag_meta)
    flags = flags.groupby(KEYS, sort=False).sum(split_out=max(1, flags.npartitions)).reset_index()
    shown = dd.from_map(read_impressions, impression_parts, id_dtype=id_dtype, label="read-impressions")
    joined = shown.merge(flags, on=KEYS, how="left")
    result = joined.map_partitions(_flagged, event_types, meta=outcomes(shown._meta, flag_meta, event_types))
    columns = ["impressions", "matched_events", *event_types]
    sums, total_events = dask.compute({group: result.groupby(group)[columns].sum() for group in GROUPS},
                                      events.shape[0])
    summary = summarise(sums, event_types)
    summary["feedback_events"] = int(total_events)
    summary["unmatched_events"] = int(total_events) - summary["matched_events"]
    return summary

