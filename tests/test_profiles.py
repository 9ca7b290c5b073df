"""Shopper profiles (homerank.engine.profiles): figures computed by hand on a tiny log, sessions from ids or time
gaps, the segmentation, and the ETL's etl/profiles/ dataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from homerank.engine import schema
from homerank.engine.profiles import fit_segments, price_terciles, session_counts, user_profiles
from homerank.jobs.cli import main
from homerank.jobs.rundir import RunDir, verify_dataset

TYPES = ["view", "click", "cart", "purchase"]
REFERENCE = pd.Timestamp("2026-01-10 12:00")


def _log() -> tuple[pd.DataFrame, pd.DataFrame]:
    events = pd.DataFrame({
        "user_id": [1, 1, 1, 2, 2, 3],
        "item_id": [10, 11, 10, 12, 10, 11],
        "event_type": ["view", "cart", "purchase", "view", "view", "click"],
        "timestamp": pd.to_datetime(["2026-01-01 08:00", "2026-01-01 08:10", "2026-01-03 09:00",
                                     "2026-01-09 20:00", "2026-01-09 20:05", "2026-01-10 12:00"]),
        "value": [0.0, 0.0, 25.0, 0.0, 0.0, 0.0],
    })
    items = pd.DataFrame({"item_id": [10, 11, 12], "category": ["shoes", "bags", "shoes"],
                          "price": [10.0, 50.0, 90.0]})
    return events, items


def test_profile_figures_match_the_hand_computation():
    events, items = _log()
    edges = price_terciles(items)
    assert edges == pytest.approx([10 + 80 / 3, 10 + 160 / 3])  # terciles of 10, 50, 90
    profile = user_profiles(events, items, edges, TYPES, REFERENCE, top=2, gap_minutes=30).set_index("user_id")
    one = profile.loc[1]
    assert (one["n_events"], one["n_view"], one["n_cart"], one["n_purchase"], one["n_items"]) == (3, 1, 1, 1, 2)
    assert one["recency_days"] == pytest.approx(7.125)  # Jan 10 12:00 - Jan 3 09:00 = 7 d 3 h
    assert one["tenure_days"] == pytest.approx(9 + 4 / 24)  # - Jan 1 08:00
    assert one["active_days"] == 2 and one["sessions"] == 2  # 08:00 and 08:10 are one session (gap 10 min)
    assert one["monetary"] == 25.0 and one["peak_hour"] == 8
    assert (one["top_category_1"], one["top_category_share_1"]) == ("shoes", pytest.approx(2 / 3))
    assert (one["top_category_2"], one["top_category_share_2"]) == ("bags", pytest.approx(1 / 3))
    assert one["median_price"] == 10.0 and one["price_band"] == "low"  # prices 10, 50, 10
    two = profile.loc[2]
    assert two["n_view"] == 2 and two["sessions"] == 1 and two["monetary"] == 0.0 and two["peak_hour"] == 20
    assert two["median_price"] == 50.0 and two["price_band"] == "mid"  # median of 90 and 10
    assert pd.isna(two["top_category_2"])  # one category only
    three = profile.loc[3]
    assert three["recency_days"] == 0.0 and three["n_click"] == 1 and three["top_category_1"] == "bags"


def test_sessions_use_session_ids_when_the_log_has_them():
    events, _ = _log()
    assert session_counts(events, 30).to_dict() == {1: 2, 2: 1, 3: 1}
    assert session_counts(events, 60 * 24 * 3).to_dict() == {1: 1, 2: 1, 3: 1}  # a 3-day gap joins Jan 1 and 3
    with_ids = events.assign(session_id=["a", "b", "b", "c", "c", "d"])
    assert session_counts(with_ids, 30).to_dict() == {1: 2, 2: 1, 3: 1}
    with_ids = events.assign(session_id=["a", "b", "c", "c", "c", "d"])
    assert session_counts(with_ids, 30).to_dict() == {1: 3, 2: 1, 3: 1}


def test_segments_separate_buyers_from_browsers_and_are_seeded():
    rng = np.random.default_rng(0)
    buyers = pd.DataFrame({"n_events": rng.integers(40, 60, 50), "active_days": rng.integers(8, 12, 50),
                           "sessions": rng.integers(10, 15, 50), "monetary": rng.uniform(400, 600, 50),
                           "recency_days": rng.uniform(0, 2, 50), "n_view": rng.integers(20, 30, 50),
                           "n_cart": rng.integers(5, 10, 50), "n_purchase": rng.integers(5, 10, 50)})
    browsers = pd.DataFrame({"n_events": rng.integers(2, 5, 50), "active_days": 1, "sessions": 1, "monetary": 0.0,
                             "recency_days": rng.uniform(30, 40, 50), "n_view": rng.integers(2, 5, 50),
                             "n_cart": 0, "n_purchase": 0})
    sample = pd.concat([buyers, browsers], ignore_index=True)
    segments = fit_segments(sample, 2, seed=0)
    labels = segments.predict(sample)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[50]
    assert segments.names[labels[50]] == "lapsed shoppers"  # above average only on recency
    assert np.array_equal(fit_segments(sample, 2, seed=0).predict(sample), labels)
    assert fit_segments(sample.head(1), 6, seed=0).names == ["everyone"]  # one distinct user: one segment


def test_the_etl_writes_one_profile_per_user(tiny_log, tiny_config, tmp_path):
    out = tmp_path / "run"
    assert main(["etl", "--input", str(tiny_log / "events"), "--out", str(out), "--config", str(tiny_config),
                 "--set", f"ingest.catalogue={tiny_log / 'items.parquet'}", "--quiet"]) == 0
    run = RunDir(out)
    verify_dataset(run.profiles)
    profiles = pd.read_parquet(run.profiles)
    kept = pd.read_parquet(run.interactions, columns=["user_id"])  # every user with a valid event
    assert profiles["user_id"].is_unique and set(profiles["user_id"]) == set(kept["user_id"])
    users_in_core = pd.read_parquet(run.user_index)["user_id"]
    assert set(profiles.loc[profiles["warm"], "user_id"]) == set(users_in_core)
    assert profiles["top_category_1"].notna().all()  # every item of the generated log is catalogued
    stats = json.loads(run.etl_stats.read_text())["profiles"]
    assert stats["users"] == len(profiles) and stats["warm"] == len(users_in_core)
    assert sum(segment["users"] for segment in stats["segments"]) == len(profiles)
    assert profiles.groupby("segment")["segment_name"].nunique().eq(1).all()
    assert "Shopper segments" in run.report.read_text()


# --- the vectorised profiles against the pandas group-by formulation they replaced ---------------------------------

def _reference_sessions(events: pd.DataFrame, gap_minutes: float) -> pd.Series:
    """Sessions per user: distinct ``session_id`` when the log has it, else runs of events separated by more
    than ``gap_minutes``."""
    if schema.SESSION in events.columns and events[schema.SESSION].notna().any():
        return events.groupby(schema.USER)[schema.SESSION].nunique()
    ordered = events[[schema.USER, schema.TS]].sort_values([schema.USER, schema.TS])
    new_user = ordered[schema.USER].ne(ordered[schema.USER].shift())
    gap = ordered[schema.TS].diff() > pd.Timedelta(minutes=gap_minutes)
    return (new_user | gap).groupby(ordered[schema.USER]).sum().astype("int64")


def _reference_top_categories(events: pd.DataFrame, items: pd.DataFrame, top: int) -> pd.DataFrame:
    """top_category_k / top_category_share_k columns per user (k = 1..top); users without a catalogued item get
    nulls."""
    located = events[[schema.USER, schema.ITEM]].merge(items[[schema.ITEM, "category"]], on=schema.ITEM, how="inner")
    located = located[located["category"].notna()]
    counts = located.groupby([schema.USER, "category"]).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby(schema.USER)["n"].transform("sum")
    counts = counts.sort_values([schema.USER, "n", "category"], ascending=[True, False, True])
    counts["k"] = counts.groupby(schema.USER).cumcount() + 1
    counts = counts[counts["k"] <= top]
    columns = {}
    for k in range(1, top + 1):
        kth = counts[counts["k"] == k].set_index(schema.USER)
        columns[f"top_category_{k}"] = kth["category"].astype("string")
        columns[f"top_category_share_{k}"] = kth["share"].astype("float64")
    return pd.DataFrame(columns)


def reference_profiles(events: pd.DataFrame, items: pd.DataFrame | None, price_edges: np.ndarray | None,
                  event_types: list[str], reference_time: pd.Timestamp, top: int, gap_minutes: float
                  ) -> pd.DataFrame:
    """The profile rows (module docstring) of the users in ``events`` (one partition, or a whole small log),
    sorted by user id; ``warm`` and the segment are added later."""
    by_user = events.groupby(schema.USER)
    profile = pd.DataFrame({"n_events": by_user.size().astype("int64")})
    for event_type in event_types:
        profile[schema.count_column(event_type)] = (events[schema.EVENT] == event_type).groupby(
            events[schema.USER]).sum().astype("int64")
    profile["n_items"] = by_user[schema.ITEM].nunique().astype("int64")
    day = pd.Timedelta(days=1)
    profile["recency_days"] = (reference_time - by_user[schema.TS].max()) / day
    profile["tenure_days"] = (reference_time - by_user[schema.TS].min()) / day
    profile["active_days"] = events[schema.TS].dt.floor("D").groupby(events[schema.USER]).nunique().astype("int64")
    profile["sessions"] = _reference_sessions(events, gap_minutes)
    if schema.VALUE in events.columns:
        purchases = events[events[schema.EVENT] == "purchase"]
        profile["monetary"] = purchases.groupby(schema.USER)[schema.VALUE].sum().reindex(profile.index).fillna(0.0)
    else:
        profile["monetary"] = 0.0
    hours = events[schema.TS].dt.hour.rename("hour")
    per_hour = hours.groupby([events[schema.USER], hours]).size().rename("n").reset_index()
    per_hour = per_hour.sort_values([schema.USER, "n", "hour"], ascending=[True, False, True])
    profile["peak_hour"] = per_hour.drop_duplicates(schema.USER).set_index(schema.USER)["hour"].astype("int64")
    if items is not None and "category" in items.columns:
        profile = profile.join(_reference_top_categories(events, items, top))
    if items is not None and "price" in items.columns and price_edges is not None:
        priced = events[[schema.USER, schema.ITEM]].merge(items[[schema.ITEM, "price"]], on=schema.ITEM)
        median = priced.groupby(schema.USER)["price"].median()
        profile["median_price"] = median.reindex(profile.index)
        band = np.digitize(profile["median_price"].to_numpy(dtype="float64"), price_edges)
        profile["price_band"] = pd.Series(np.asarray(("low", "mid", "high"), dtype=object)[np.minimum(band, 2)],
                                          index=profile.index, dtype="string").where(profile["median_price"].notna())
    return profile.rename_axis(schema.USER).reset_index()



@pytest.mark.parametrize("seed", range(6))
def test_vectorised_profiles_equal_the_group_by_formulation(seed):
    """Random logs (unsorted; missing values and session ids; items outside the catalogue; categories and prices
    missing; ties in counts and hours): every column equals the pandas group-by formulation."""
    rng = np.random.default_rng(seed)
    n = 400
    events = pd.DataFrame({
        "user_id": rng.integers(0, 25, n) * 3 + 7,
        "item_id": rng.integers(0, 30, n),
        "event_type": rng.choice(TYPES, n, p=[0.55, 0.2, 0.15, 0.1]),
        "timestamp": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 20 * 86400, n), unit="s"),
        "value": np.where(rng.random(n) < 0.1, np.nan, rng.integers(0, 50, n).astype(float)),
    })
    if seed % 2:
        events["session_id"] = pd.array(np.where(rng.random(n) < 0.2, None, rng.integers(0, 40, n)), dtype="Int64")
    items = pd.DataFrame({"item_id": np.arange(25),  # items 25..29 are not in the catalogue
                          "category": pd.array(np.where(rng.random(25) < 0.2, None, rng.choice(["a", "b", "c"], 25)),
                                               dtype="string"),
                          "price": np.where(rng.random(25) < 0.2, np.nan, rng.integers(1, 100, 25).astype(float))})
    edges = price_terciles(items)
    expected = reference_profiles(events, items, edges, TYPES, REFERENCE, top=2, gap_minutes=60 * 24)
    ordered = events.sort_values(["user_id", "item_id", "timestamp"], kind="stable").reset_index(drop=True)
    categorical = ordered.astype({"event_type": pd.CategoricalDtype(["purchase", "hover", *TYPES[:3]])})
    for frame in (events, ordered, categorical):  # any order, the ETL's (user, item, time) order, coded types
        got = user_profiles(frame, items, edges, TYPES, REFERENCE, top=2, gap_minutes=60 * 24)
        assert list(got.columns) == list(expected.columns)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_index_type=False)
