"""Explanations a shopper can read (homepage/explain.py) and the profile-driven homepage: hand-built cases whose
sentences, shares and fallbacks are worked out by hand."""

import json
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import torch
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from homerank.engine.profiles import user_profiles
from homerank.homepage.build import build_pages
from homerank.homepage.catalogue import Catalogue
from homerank.homepage.config import HomepageConfig
from homerank.homepage.explain import Explainer
from homerank.homepage.export import jsonl_text, page_records
from homerank.jobs.preview import render_preview
from homerank.jobs.rundir import RunDir

NOW = pd.Timestamp("2026-03-29")
DAY = pd.Timedelta(days=1)


def _catalogue() -> Catalogue:
    """Items 10..14 at positions 0..4, categories A A B B C."""
    return Catalogue(
        item_ids=np.array([10, 11, 12, 13, 14]), category=np.array(["A", "A", "B", "B", "C"]),
        title=np.array(["t10", "t11", "t12", "t13", "t14"]), in_stock=np.ones(5, dtype=bool),
        created_at=np.array([NOW - 400 * DAY] * 4 + [NOW - 3 * DAY], dtype="datetime64[ns]"),
        price_band=np.zeros(5, dtype=np.int64), model_index=np.arange(5), trending=np.zeros(5),
        popularity=np.array([3.0, 1.0, 2.0, 0.0, 5.0]))


def _unit(rows: list[list[float]]) -> np.ndarray:
    vectors = np.array(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# 13 lies closest to 11; 11 is orthogonal to both 10 and 12
VECTORS = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.1, 0.9, 0.2], [0.6, 0.8, 0]])


def _interactions() -> pd.DataFrame:
    """u viewed 10 (newest), bought 11, viewed 12 (oldest); w, x, y, z touched 14 (three of them this week)."""
    return pd.DataFrame({
        "user_id": ["u", "u", "u", "w", "x", "y", "z"], "item_id": [10, 11, 12, 14, 14, 14, 14],
        "weight": 1.0,
        "first_ts": [NOW - DAY, NOW - 2 * DAY, NOW - 3 * DAY, NOW - 28 * DAY, NOW - DAY, NOW - 2 * DAY, NOW - 20 * DAY],
        "last_ts": [NOW - DAY, NOW - 2 * DAY, NOW - 3 * DAY, NOW - DAY, NOW - DAY, NOW - 2 * DAY, NOW - 20 * DAY],
        "n_view": [1, 1, 1, 1, 1, 1, 1], "n_cart": [0, 0, 0, 0, 0, 0, 0], "n_purchase": [0, 2, 0, 0, 0, 0, 0]})


def _explainer(profiles: pd.DataFrame | None = None, segment_names: dict | None = None) -> Explainer:
    signals = SimpleNamespace(segment_names=segment_names or {})
    return Explainer(_catalogue(), signals, _interactions(), profiles, VECTORS, NOW, HomepageConfig())


def _page(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "reason"])


def test_model_slots_name_the_most_similar_item_of_the_history():
    sentences, kinds = _explainer().explain(_page([
        ("u", 13, "for_you:model_score"),  # closest to 11, which u bought
        ("u", 11, "for_you:model_score"),  # 11 itself is left out; 10 and 12 tie at cosine 0: the newer, 10
        ("u", 14, "for_you:model_score;boost:+1"),  # cos(14, 10) = 0.6, cos(14, 11) = 0.8, cos(14, 12) = 0: 11
    ]))
    assert sentences.tolist() == ["Because you bought t11", "Because you viewed t10", "Because you bought t11"]
    assert kinds.tolist() == ["similar_item"] * 3


def test_category_share_is_the_profiles_share_of_the_users_events():
    # u's events: 3 in A (10, 11, 11), 2 in B (12, 13): B is 2/5 = 40%, A 3/5 = 60%
    events = pd.DataFrame({"user_id": ["u"] * 5, "item_id": [10, 11, 11, 12, 13],
                           "event_type": ["view", "view", "purchase", "view", "view"],
                           "timestamp": [NOW - k * DAY for k in range(5)]})
    items = pd.DataFrame({"item_id": [10, 11, 12, 13, 14], "category": ["A", "A", "B", "B", "C"]})
    profiles = user_profiles(events, items, None, ["view", "purchase"], NOW, top=3, gap_minutes=30)
    assert profiles.loc[0, "top_category_2"] == "B" and profiles.loc[0, "top_category_share_2"] == 2 / 5
    sentences, kinds = _explainer(profiles).explain(_page([
        ("u", 13, "new_arrival:model_score"),
        ("u", 10, "new_arrival:cold_start_category_price_band"),
        ("u", 14, "new_arrival:model_score"),  # C: not in u's profile, so how new it is
    ]))
    assert sentences.tolist() == ["New in B, where 40% of your activity is", "New in A, where 60% of your activity is",
                                  "New in C, added 3 days ago"]
    assert kinds.tolist() == ["category_share", "category_share", "new_arrival"]


def test_trend_popularity_anchor_purchase_pin_and_segment_sentences():
    sentences, kinds = _explainer(segment_names={1: "big spenders (2)"}).explain(_page([
        # 14: 3 users this week of 4 in a log spanning 28 days: expected 4 x 7 / 28 = 1 a week, so 3.0x
        ("u", 14, "trending_in_category:user_top_category:C"),
        ("u", 12, "for_you:fallback_popularity"),
        ("u", 13, "because_you_viewed:similar_to:12"),
        ("u", 11, "buy_again:purchased_before"),
        ("u", 10, "pin:merchandising:row2"),
        ("c", 14, "for_you:fallback_segment_popularity:1"),
    ]))
    assert sentences.tolist() == [
        "Trending: 3 shoppers in the last 7 days, 3.0× its weekly average", "Popular with 2 shoppers",
        "Because you viewed t12", "You bought this 2 times", "Featured by our team",
        "Popular with shoppers like you (big spenders)"]
    assert kinds.tolist() == ["trend", "popularity", "viewed_item", "purchase_history", "featured", "segment"]


def _frames():
    """build_pages inputs: u and v have model rows; c and d do not (dropped by the k-core)."""
    catalogue = pd.DataFrame({
        "item_id": [10, 11, 12, 13, 14], "category": ["A", "B", "C", "D", "E"],
        "title": ["t10", "t11", "t12", "t13", "t14"], "price": [1.0, 2.0, 3.0, 4.0, 5.0],
        "created_at": [NOW - 400 * DAY] * 5, "in_stock": [True] * 5})
    interactions = pd.DataFrame({
        "user_id": ["u", "u", "v", "v", "v", "c", "d"], "item_id": [10, 12, 12, 11, 13, 14, 14], "weight": 1.0,
        "first_ts": [NOW - DAY] * 7, "last_ts": [NOW - DAY * k for k in (1, 2, 1, 2, 3, 1, 1)],
        "n_view": 1, "n_purchase": 0})
    item_index = pd.DataFrame({"item_id": [10, 11, 12, 13, 14], "item_index": [0, 1, 2, 3, 4]})
    user_index = pd.DataFrame({"user_id": ["u", "v"], "user_index": [0, 1]})
    edges = interactions[interactions["user_id"].isin(["u", "v"])].merge(user_index).merge(item_index)
    edges = edges.assign(split="train")
    generator = torch.Generator().manual_seed(0)
    user_embeddings, item_embeddings = torch.randn(2, 4, generator=generator), torch.randn(5, 4, generator=generator)
    candidates = np.array([[1, 3, 4], [0, 4, 2]])
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    return (candidates, scores, item_embeddings, user_embeddings, interactions, edges, user_index, item_index,
            catalogue, NOW)


# c shares a segment with u and v (segment 1); d is alone in segment 2, which has no training users
PROFILES = pd.DataFrame({"user_id": ["u", "v", "c", "d"], "segment": [1, 1, 1, 2],
                         "segment_name": ["big spenders", "big spenders", "big spenders", "lapsed shoppers"],
                         "top_category_1": ["A", "C", "E", "E"], "top_category_share_1": [0.5, 0.4, 1.0, 1.0]})


def test_users_without_a_model_row_get_their_segments_favourites():
    settings = HomepageConfig(block_users=2, new_arrival_days=1)
    homepage = build_pages(*_frames(), settings, profiles=PROFILES)
    page = homepage.page
    rows = {(user, section): rows for (user, section), rows in page.groupby(["user_id", "section"], sort=False)}
    # segment 1's training users: 12 by u and v (2 users), 10, 11 and 13 by one each (ties: overall popularity,
    # here 1 user each, then catalogue order); 14 (c's own, untrained) comes from overall popularity after them
    favourites = rows["c", "for_you"]
    assert favourites["item_id"].tolist()[:4] == [12, 10, 11, 13]
    assert (favourites["reason"].iloc[:4] == "for_you:fallback_segment_popularity:1").all()
    assert (favourites["section_title"] == "Popular with shoppers like you").all()
    assert (favourites["explanation"].iloc[:4] == "Popular with shoppers like you (big spenders)").all()
    # d's segment has nobody in training: overall popularity, as without profiles
    assert (rows["d", "for_you"]["reason"] == "for_you:fallback_popularity").all()
    assert (rows["d", "for_you"]["section_title"] == "Recommended for you").all()
    assert rows["u", "for_you"]["reason"].tolist()[:3] == ["for_you:model_score"] * 3  # then overall popularity
    assert homepage.stats["segment_fallback_users"] == 1 and homepage.stats["rule_check"]["passed"]
    assert homepage.stats["rule_check"]["violations"]["empty_explanation"] == 0
    assert set(homepage.stats["explanations"]) >= {"segment", "similar_item"}


def test_profile_fields_in_titles():
    settings = HomepageConfig.model_validate({"sections": [
        {"kind": "trending_in_category", "title": "Because you like {top_category}", "slots": 2},
        {"kind": "for_you", "title": "For you", "segment_title": "Loved by {segment_name}", "slots": 2}]})
    page = build_pages(*_frames(), settings, profiles=PROFILES).page
    titles = page.drop_duplicates(["user_id", "section"]).set_index(["user_id", "section"])["section_title"]
    assert titles["u", "trending_in_category"] == "Because you like A"
    assert titles["c", "for_you"] == "Loved by big spenders" and titles["u", "for_you"] == "For you"


def test_the_homepage_works_without_profiles():
    homepage = build_pages(*_frames(), HomepageConfig(block_users=2, new_arrival_days=1))
    page = homepage.page
    assert page["explanation"].str.len().gt(0).all() and homepage.stats["rule_check"]["passed"]
    cold = page[page["user_id"].isin(["c", "d"]) & (page["section"] == "for_you")]
    assert (cold["reason"] == "for_you:fallback_popularity").all()
    # items nobody in training touched (popularity 0) are honestly "More from our catalogue"
    assert cold["explanation"].str.match(r"Popular with \d+ shoppers?$|More from our catalogue$").all()
    assert cold["explanation"].str.startswith("Popular with").any()
    assert "category_share" not in homepage.stats["explanations"] and homepage.stats["segment_fallback_users"] == 0
    # explained for_you slots of u name an item u interacted with
    warm = page[(page["user_id"] == "u") & (page["reason"] == "for_you:model_score")]
    assert warm["explanation"].isin(["Because you viewed t10", "Because you viewed t12"]).all()


def test_json_lines_and_preview_carry_the_explanation(tmp_path):
    page = build_pages(*_frames(), HomepageConfig(new_arrival_days=1), profiles=PROFILES).page
    text = jsonl_text(page)
    assert text == "".join(json.dumps(record) + "\n" for record in page_records(page))
    first = json.loads(text.splitlines()[0])
    assert first["sections"][0]["items"][0]["explanation"] == page["explanation"].iloc[0]
    run = RunDir(tmp_path)
    run.homepage.mkdir(parents=True)
    page.to_parquet(run.homepage / "part-00000.parquet", index=False)
    html = render_preview(run, "c")
    assert "class='explanation'>Popular with shoppers like you (big spenders)</div>" in html
    # a homepage written before explanations existed still renders (reason only)
    page.drop(columns="explanation").to_parquet(run.homepage / "part-00000.parquet", index=False)
    assert "class='explanation'" not in render_preview(run, "c") and "fallback_segment" in render_preview(run, "c")


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(10, 14), st.integers(0, 10), st.integers(0, 2)),
                min_size=1, max_size=40, unique_by=lambda r: (r[0], r[1])), st.integers(1, 5), st.integers(1, 4))
def test_histories_made_in_user_pieces_equal_one_piece(rows, chunk, history):
    """Interactions in (user, item) order give each user's newest ``explain_history`` items (ties by position) and
    their verbs, each (user, item)'s purchases and each item's recent and all users, whether the tables are made in
    pieces of ``chunk`` rows cut at user boundaries or in one."""
    from homerank.homepage import explain as explain_module

    rows = sorted(rows)
    interactions = pd.DataFrame({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "weight": 1.0,
        "last_ts": [NOW - r[2] * DAY for r in rows], "n_view": 1,
        "n_cart": [int(r[3] == 1) for r in rows], "n_purchase": [int(r[3] == 2) for r in rows]})
    settings = HomepageConfig(explain_history=history)
    made = {}
    for size in (chunk, 10**6):
        with mock.patch.object(explain_module, "USER_CHUNK", size):
            explainer = Explainer(_catalogue(), None, interactions, None, VECTORS, NOW, settings)
        made[size] = [(user, explainer.history_positions[start : start + length].tolist(),
                       explainer.history_verbs[start : start + length].tolist())
                      for user, start, length in zip(explainer.users, explainer.history_start,
                                                     explainer.history_length, strict=True)]
        made[size].append((explainer.bought_keys.tolist(), explainer.bought_counts.tolist(),
                           explainer.recent_users.tolist(), explainer.all_users.tolist()))
    assert made[chunk] == made[10**6]
    *histories, (bought_keys, bought_counts, recent_users, all_users) = made[10**6]
    users = sorted({r[0] for r in rows})
    assert bought_keys == sorted(users.index(r[0]) * 5 + r[1] - 10 for r in rows if r[3] == 2)
    assert bought_counts == [1] * len(bought_keys)
    assert all_users == [sum(r[1] == item for r in rows) for item in range(10, 15)]
    assert recent_users == [sum(r[1] == item and r[2] <= 7 for r in rows) for item in range(10, 15)]  # a 7-day window
    expected = []  # by definition: newest first, ties by position (= item order here), the first `history` kept
    for user, group in interactions.groupby("user_id"):
        newest = group.assign(pos=group["item_id"] - 10).sort_values(["last_ts", "pos"], ascending=[False, True])
        newest = newest.head(history)
        expected.append((user, newest["pos"].tolist(), (newest["n_cart"] + 2 * newest["n_purchase"]).tolist()))
    assert histories == expected
