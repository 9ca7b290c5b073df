"""Shopper profiles (homerank.engine.profiles): figures computed by hand on a tiny log, sessions from ids or time
gaps, the segmentation, and the ETL's etl/profiles/ dataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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
