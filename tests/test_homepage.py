"""The homepage rules, asserted over every user of an end-to-end run on a tiny synthetic log; then the section
functions, the section registry, the row builder and build_pages (frames in, no run directory) by hand."""

import json
from typing import get_args

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from homerank.homepage.build import build_pages
from homerank.homepage.candidates import CandidateLists
from homerank.homepage.catalogue import Catalogue
from homerank.homepage.config import HomepageConfig, SectionConfig, SectionKind
from homerank.homepage.rows import PageBuilder
from homerank.homepage.sections import (
    PURCHASE_KINDS,
    SECTION_KINDS,
    UNCAPPED_KINDS,
    because_you_viewed,
    buy_again,
    for_you,
    new_arrivals,
    trending_in_category,
)
from homerank.homepage.signals import PageSignals, top_categories


@pytest.mark.slow
def test_every_page_follows_the_rules(homepage_run):
    run, log = homepage_run
    page = pd.read_parquet(run / "homepage")
    assert list(page.columns) == ["user_id", "section", "section_title", "slot", "item_id", "score", "reason",
                                 "explanation"]
    catalogue = pd.read_parquet(log / "items.parquet").set_index("item_id")
    interactions = pd.read_parquet(run / "etl" / "interactions")
    # every user with history has a page, and no page is empty
    assert set(page["user_id"]) == set(interactions["user_id"])
    # an item appears once per page
    assert not page.duplicated(["user_id", "item_id"]).any()
    # out-of-stock items never appear
    assert catalogue.loc[page["item_id"], "in_stock"].all()
    # purchased items only in buy_again
    bought = interactions[interactions["n_purchase"] > 0][["user_id", "item_id"]]
    clash = page.merge(bought, on=["user_id", "item_id"])
    assert (clash["section"] == "buy_again").all()
    # at most max_per_category items of one category per row (the exempt rows: one category or the user's own visit)
    page["category"] = catalogue.loc[page["item_id"], "category"].to_numpy()
    capped = page[~page["section"].isin(UNCAPPED_KINDS)]
    assert capped.groupby(["user_id", "section", "category"]).size().max() <= 2
    # slots are 1..n within each row and never exceed the configured count
    limits = {"for_you": 10, "because_you_viewed": 8, "trending_in_category": 8, "new_arrivals": 8, "buy_again": 6,
              "continue_shopping": 8, "related_to_searches": 8}
    for (_, section), rows in page.groupby(["user_id", "section"]):
        assert rows["slot"].tolist() == list(range(1, len(rows) + 1)) and len(rows) <= limits[section]
    assert page["reason"].notna().all() and (page["reason"].str.len() > 0).all()
    # titles are filled from the templates
    viewed = page[page["section"] == "because_you_viewed"]["section_title"]
    assert viewed.str.startswith("Because you viewed ").all() and not viewed.str.contains("{", regex=False).any()
    trending = page[page["section"] == "trending_in_category"]
    assert (trending["section_title"] == "Trending in " + trending["category"]).all()
    # the stage checks the same rules over its whole output on every run (the demo included)
    check = json.loads((run / "homepage_stats.json").read_text())["rule_check"]
    assert check["passed"] and check["users_checked"] == page["user_id"].nunique()
    assert check["slots_checked"] == len(page)
    assert "Page rules checked over all" in (run / "report.md").read_text()


@pytest.mark.slow
def test_cold_users_new_items_and_outputs(homepage_run):
    run, log = homepage_run
    page = pd.read_parquet(run / "homepage")
    stats = json.loads((run / "homepage_stats.json").read_text())
    # users the k-core dropped have no embedding: their rows come from fallbacks, and their page is full
    cold = page[page["reason"].str.contains("fallback")]["user_id"].unique()
    assert stats["cold_users"] == 0 or len(cold) > 0
    # brand-new items (never interacted with) can appear, scored inductively
    assert page["reason"].eq("new_arrival:cold_start_category_price_band").any()
    interactions = pd.read_parquet(run / "etl" / "interactions")
    never_seen = ~page["item_id"].isin(interactions["item_id"])
    assert never_seen.any()
    # JSON Lines: one object per user, rows in page order, same content as the Parquet dataset
    lines = (run / "homepage.jsonl").read_text().splitlines()
    assert len(lines) == page["user_id"].nunique()
    first = json.loads(lines[0])
    rows = page[page["user_id"] == first["user_id"]]
    flattened = [(s["section"], item["slot"], item["item_id"]) for s in first["sections"] for item in s["items"]]
    assert flattened == list(zip(rows["section"], rows["slot"], rows["item_id"], strict=True))
    assert (run / "homepage" / "_SUCCESS.json").exists()
    quality = stats["quality"]
    for side in ("homepage", "top_k_baseline"):
        assert set(quality[side]) >= {"coverage", "diversity", "novelty_bits", "gini", "cold_share"}
        assert 0 <= quality[side]["coverage"] <= 1 and 0 <= quality[side]["gini"] <= 1
    assert quality["homepage"]["cold_share"] > 0 and "recall@10" in quality["for_you_accuracy"]
    assert np.isfinite(quality["homepage"]["novelty_bits"])


def _catalogue() -> Catalogue:
    """Five items at positions 0..4; item 13 is unknown to the model."""
    return Catalogue(
        item_ids=np.array([10, 11, 12, 13, 14]), category=np.array(["A", "A", "B", "B", "C"]),
        title=np.array(["t10", "t11", "t12", "t13", "t14"]), in_stock=np.array([True, True, True, True, True]),
        created_at=np.array(["2026-01-01"] * 5, dtype="datetime64[ns]"), price_band=np.array([0, 1, 2, 3, 0]),
        model_index=np.array([0, 1, 2, -1, 3]), trending=np.array([0.5, 2.0, 1.0, 0.0, 3.0]),
        popularity=np.array([3.0, 1.0, 2.0, 0.0, 5.0]))


def _signals(new_positions: list[int] | None = None) -> PageSignals:
    """User "u" has a model row, user "c" is cold."""
    catalogue = _catalogue()
    new = np.array([3, 4] if new_positions is None else new_positions, dtype=np.int64)
    return PageSignals(
        catalogue=catalogue, model_row={"u": 0},
        candidates=CandidateLists(np.array([[2, 0, 1]]), np.array([[0.9, 0.5, 0.1]])),
        by_popularity=np.argsort(-catalogue.popularity, kind="stable"),
        last_viewed=pd.Series({"u": 2}), neighbours={2: (np.array([0, 4]), np.array([0.8, 0.3]))},
        trending_by_category={"A": np.array([1, 0]), "B": np.array([2, 3]), "C": np.array([4])},
        top_category=pd.Series({"u": "B"}), global_category="C",
        new_positions=new, new_scores=np.array([[0.2, 0.7]])[:, : new.size],
        new_reason=np.array(["new_arrival:cold_start_category_price_band", "new_arrival:model_score"])[: new.size],
        purchases=pd.DataFrame({"user_id": ["u"], "item_id": [10]}), purchased={"u": {0}},
        buy_again={"u": np.array([0])})


def _plain_sources(row):
    return [(positions.tolist(), np.round(scores, 6).tolist(), reasons) for positions, scores, reasons in row.sources]


def test_registry_covers_every_configurable_kind_and_states_the_exemptions_once():
    assert set(SECTION_KINDS) == set(get_args(SectionKind))
    assert UNCAPPED_KINDS == ("trending_in_category", "buy_again", "related_to_searches", "continue_shopping")
    assert PURCHASE_KINDS == ("buy_again",)


def test_for_you_is_the_model_ranking_then_popularity():
    signals = _signals()
    assert _plain_sources(for_you("u", signals)) == [
        ([2, 0, 1], [0.9, 0.5, 0.1], "for_you:model_score"),
        ([4, 0, 2, 1, 3], [5.0, 3.0, 2.0, 1.0, 0.0], "for_you:fallback_popularity")]
    assert _plain_sources(for_you("c", signals)) == [
        ([4, 0, 2, 1, 3], [5.0, 3.0, 2.0, 1.0, 0.0], "for_you:fallback_popularity")]


def test_because_you_viewed_uses_the_last_viewed_items_neighbours():
    row = because_you_viewed("u", _signals())
    assert _plain_sources(row) == [([0, 4], [0.8, 0.3], "because_you_viewed:similar_to:12")]
    assert row.title_values == {"item_title": "t12"}
    assert because_you_viewed("c", _signals()) is None  # nothing viewed: no row at all


def test_trending_in_category_uses_the_users_top_category_else_the_global_one():
    warm, cold = trending_in_category("u", _signals()), trending_in_category("c", _signals())
    assert _plain_sources(warm) == [([2, 3], [1.0, 0.0], "trending_in_category:user_top_category:B")]
    assert warm.title_values == {"category": "B"}
    assert _plain_sources(cold) == [([4], [3.0], "trending_in_category:fallback_global:C")]


def test_new_arrivals_by_the_users_score_else_by_trending():
    signals = _signals()
    assert _plain_sources(new_arrivals("u", signals)) == [
        ([4, 3], [0.7, 0.2], ["new_arrival:model_score", "new_arrival:cold_start_category_price_band"])]
    assert _plain_sources(new_arrivals("c", signals)) == [([4, 3], [3.0, 0.0], "new_arrival:fallback_trending")]
    assert new_arrivals("u", _signals(new_positions=[])) is None


def test_buy_again_only_for_users_who_bought_in_repeat_categories():
    assert _plain_sources(buy_again("u", _signals())) == [([0], [0.0], "buy_again:purchased_before")]
    assert buy_again("c", _signals()) is None


def test_top_category_breaks_ties_alphabetically():
    interactions = pd.DataFrame({"user_id": ["u", "u", "u", "v"], "pos": [4, 2, 0, 1], "weight": [2.0, 1.0, 1.0, 1.0]})
    assert top_categories(interactions, _catalogue()).to_dict() == {"u": "C", "v": "A"}
    interactions.loc[0, "weight"] = 1.0  # u: A, B and C tie at 1.0
    assert top_categories(interactions, _catalogue()).to_dict() == {"u": "A", "v": "A"}


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u", "v", "w", "x"]), st.integers(0, 4), st.sampled_from([0.5, 1.0, 2.0])),
                min_size=1, max_size=30))
def test_top_category_equals_the_group_by_definition(rows):
    """Positive weights: one (U, K) bincount; with the bins limited, the grouped sums; both equal the definition."""
    from unittest import mock

    from homerank.homepage import signals as signals_module

    interactions = pd.DataFrame(rows, columns=["user_id", "pos", "weight"])
    catalogue = _catalogue()
    expected = _top_category_by_definition(interactions, catalogue)
    assert top_categories(interactions, catalogue).sort_index().to_dict() == expected
    with mock.patch.object(signals_module, "CATEGORY_BINS", 1):
        assert top_categories(interactions, catalogue).sort_index().to_dict() == expected


@hypothesis_settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4), st.sampled_from([-1.0, 0.5, 1.0, 2.0])),
                min_size=1, max_size=40), st.integers(1, 7), st.booleans())
def test_top_category_in_pieces_equals_the_definition(rows, chunk, in_user_order):
    """Integer user ids in user order are summed in pieces of ``chunk`` rows cut at user boundaries (a user's rows
    never split between pieces); shuffled ones in one piece: both equal the definition, users in first-seen order."""
    interactions = pd.DataFrame(rows, columns=["user_id", "pos", "weight"])
    if in_user_order:
        interactions = interactions.sort_values("user_id", kind="stable").reset_index(drop=True)
    catalogue = _catalogue()
    found = top_categories(interactions, catalogue, chunk=chunk)
    assert found.index.tolist() == pd.unique(interactions["user_id"]).tolist()
    assert found.sort_index().to_dict() == _top_category_by_definition(interactions, catalogue)


@hypothesis_settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u", "v", "w"]), st.integers(0, 4), st.sampled_from([-1.0, 0.0, 1.0])),
                min_size=1, max_size=20))
def test_top_category_with_zero_or_negative_weights_only_counts_touched_categories(rows):
    interactions = pd.DataFrame(rows, columns=["user_id", "pos", "weight"])
    catalogue = _catalogue()
    assert top_categories(interactions, catalogue).sort_index().to_dict() == \
        _top_category_by_definition(interactions, catalogue)


def _top_category_by_definition(interactions: pd.DataFrame, catalogue) -> dict:
    return (interactions.assign(category=catalogue.category[interactions["pos"].to_numpy()])
            .groupby(["user_id", "category"])["weight"].sum().reset_index()
            .sort_values(["user_id", "weight", "category"], ascending=[True, False, True])
            .groupby("user_id").head(1).set_index("user_id")["category"]).to_dict()


def test_the_builder_reads_the_cap_and_purchase_exemptions_from_the_registry():
    sections = {kind: SectionConfig(kind=kind, title=kind, slots=3) for kind in SECTION_KINDS}
    settings = HomepageConfig(sections=list(sections.values()), max_per_category=1)
    builder = PageBuilder(_catalogue(), settings, np.eye(5))
    used: set[int] = set()
    purchased = {2}
    # for_you is capped: 1 (A) after 0 (A) is skipped; 2 was bought
    builder.fill("u", sections["for_you"], "F", [(np.array([0, 1, 2, 4]), np.ones(4), "r")], used, purchased)
    # trending is exempt from the cap: 1 and 3 fill after 0 and 4 are taken; 2 was bought
    builder.fill("u", sections["trending_in_category"], "T", [(np.array([0, 1, 2, 3]), np.ones(4), "t")], used,
                 purchased)
    # buy_again may show the bought item 2
    builder.fill("u", sections["buy_again"], "B", [(np.array([2]), np.zeros(1), "b")], used, purchased)
    assert [(row[1], row[3], row[4]) for row in builder.rows] == [
        ("for_you", 1, 10), ("for_you", 2, 14), ("trending_in_category", 1, 11), ("trending_in_category", 2, 13),
        ("buy_again", 1, 12)]


def test_build_pages_from_frames_without_a_run_directory():
    now = pd.Timestamp("2026-03-10")
    day = pd.Timedelta(days=1)
    catalogue = pd.DataFrame({
        "item_id": [10, 11, 12, 13, 14], "category": ["A", "A", "B", "B", "Coffee"],
        "title": ["t10", "t11", "t12", "t13", "t14"], "price": [1.0, 2.0, 3.0, 4.0, 5.0],
        "created_at": [now - 400 * day, now - 400 * day, now - 400 * day, now - day, now - 400 * day],
        "in_stock": [True, True, True, True, True]})
    # u viewed 10, then 12 (newest), and bought 14; v viewed 11 and 12; c (no model row) viewed 11
    interactions = pd.DataFrame({
        "user_id": ["u", "u", "u", "v", "v", "c"], "item_id": [10, 14, 12, 11, 12, 11],
        "weight": [1.0, 3.0, 1.0, 1.0, 1.0, 1.0],
        "first_ts": [now - 3 * day, now - 2 * day, now - day / 2, now - 2 * day, now - day, now - day],
        "last_ts": [now - 3 * day, now - 2 * day, now - day / 2, now - 2 * day, now - day, now - day],
        "n_view": [1, 0, 1, 1, 1, 1], "n_purchase": [0, 1, 0, 0, 0, 0]})
    item_index = pd.DataFrame({"item_id": [10, 11, 12, 14], "item_index": [0, 1, 2, 3]})
    user_index = pd.DataFrame({"user_id": ["u", "v"], "user_index": [0, 1]})
    edges = interactions[interactions["user_id"] != "c"].merge(user_index).merge(item_index).assign(split="train")
    settings = HomepageConfig(max_per_category=1, repeat_purchase_categories=["Coffee"], new_arrival_days=7)
    generator = torch.Generator().manual_seed(0)
    user_embeddings, item_embeddings = torch.randn(2, 4, generator=generator), torch.randn(4, 4, generator=generator)
    # the model's candidates (model item index): u ranks 14, 10, 11, 12; v ranks 12, 11, 10, 14
    candidates = np.array([[3, 0, 1, 2], [2, 1, 0, 3]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    homepage = build_pages(candidates, scores, item_embeddings, user_embeddings, interactions, edges, user_index,
                           item_index, catalogue, now, settings)
    page = homepage.page
    assert list(page.columns) == ["user_id", "section", "section_title", "slot", "item_id", "score", "reason",
                                 "explanation"]
    assert page["user_id"].drop_duplicates().tolist() == ["c", "u", "v"]
    rows = {(user, section): rows for (user, section), rows in page.groupby(["user_id", "section"], sort=False)}
    # u: 14 was bought, 11 is a second A under the cap; the popularity fallback has nothing new to add
    assert rows["u", "for_you"]["item_id"].tolist() == [10, 12]
    assert (rows["u", "for_you"]["reason"] == "for_you:model_score").all()
    # u's last view is 12; of its neighbours only 11 is left (10 is on the page, 14 was bought)
    assert rows["u", "because_you_viewed"]["item_id"].tolist() == [11]
    assert rows["u", "because_you_viewed"]["section_title"].tolist() == ["Because you viewed t12"]
    assert rows["u", "because_you_viewed"]["reason"].tolist() == ["because_you_viewed:similar_to:12"]
    # 13 is a new arrival the model never saw: scored inductively for u, by trending for the cold user c
    assert rows["u", "new_arrivals"]["reason"].tolist() == ["new_arrival:cold_start_category_price_band"]
    assert rows["c", "new_arrivals"]["reason"].tolist() == ["new_arrival:fallback_trending"]
    assert rows["u", "buy_again"]["item_id"].tolist() == [14]
    assert (rows["c", "for_you"]["reason"] == "for_you:fallback_popularity").all()
    assert homepage.stats["cold_users"] == 1 and homepage.stats["rule_check"]["passed"]
    assert homepage.stats["users"] == 3 and homepage.stats["rows"] == len(page)


def test_last_viewed_item_is_the_newest_viewed_row_first_row_on_ties():
    from homerank.homepage.signals import POSITION, last_viewed_items

    day = pd.Timestamp("2024-01-01")
    interactions = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "b", "c", "d", "d"],
        "item_id": [1, 2, 3, 1, 2, 3, 1, 2],
        "n_view": [1, 1, 0, 2, 2, 0, 1, 1],  # a's newest row is not a view; c never viewed
        "last_ts": [day, day + pd.Timedelta(hours=5), day + pd.Timedelta(days=2), day + pd.Timedelta(hours=1),
                    day + pd.Timedelta(hours=1), day, pd.NaT, day],
        POSITION: [10, 20, 30, 10, 20, 30, 10, 20],
    })
    interactions["weight"] = 1.0
    last = last_viewed_items(interactions)
    assert last.to_dict() == {"a": 20, "b": 10, "d": 20}  # b: a tie, the first row wins; d: NaT is never newest
    assert last_viewed_items(interactions.iloc[:0]).empty
    # integer ids in user order: pieces of 1..3 rows cut at user boundaries give the same answer, in the same order
    numbered = interactions.assign(user_id=interactions["user_id"].map({"a": 1, "b": 2, "c": 3, "d": 4}))
    for chunk in (1, 2, 3):
        found = last_viewed_items(numbered, chunk)
        assert found.index.tolist() == [1, 2, 4] and found.tolist() == [20, 10, 20]


@pytest.mark.parametrize("chunk", [1, 2, 8192])
@pytest.mark.parametrize("count", [1, 5, 40])
def test_item_neighbours_are_the_closest_items_by_cosine_in_one_padded_table(count, chunk, monkeypatch):
    from types import SimpleNamespace

    from homerank.homepage import signals as signals_module
    from homerank.homepage.signals import ItemNeighbours, item_neighbours

    monkeypatch.setattr(signals_module, "NEIGHBOUR_CHUNK", chunk)  # anchors searched in chunks of this many

    rng = np.random.default_rng(count)
    vectors = torch.from_numpy(rng.normal(size=(12, 4)).astype(np.float32))
    # catalogue of 14 positions: position p holds model item p - 2 (positions 0 and 1 are outside the model)
    model_index = np.r_[-1, -1, np.arange(12)]
    positions_of_model_items = np.arange(12) + 2
    anchors = np.array([9, 2, 13])
    found = item_neighbours(anchors, SimpleNamespace(model_index=model_index), vectors, positions_of_model_items,
                            count)
    assert isinstance(found, ItemNeighbours) and sorted(found) == [2, 9, 13] and 5 not in found
    unit = vectors.numpy() / np.linalg.norm(vectors.numpy(), axis=1, keepdims=True)
    for anchor in anchors.tolist():
        row = model_index[anchor]
        cosines = unit @ unit[row]
        others = [j for j in np.argsort(-cosines, kind="stable") if j != row][: min(count, 11)]
        positions, scores = found[anchor]
        np.testing.assert_array_equal(positions, positions_of_model_items[others])
        np.testing.assert_allclose(scores, cosines[others], atol=1e-5)
    assert found.positions.shape == (3, min(count, 11))


def test_list_metrics_read_part_by_part_equal_the_whole_frame():
    from homerank.homepage.quality import list_metrics

    rng = np.random.default_rng(3)
    item_ids = np.arange(100, 130)
    category = rng.choice(["A", "B", "C"], item_ids.size)
    popularity = rng.integers(0, 50, item_ids.size).astype(float)
    model_index = np.where(rng.random(item_ids.size) < 0.2, -1, np.arange(item_ids.size))
    pages = pd.DataFrame({"user_id": np.repeat(np.arange(40), 6),
                          "item_id": rng.choice(np.append(item_ids, [999]), 240)})  # 999: not in the catalogue
    whole = list_metrics(pages, item_ids, category, popularity, model_index, 40)
    parts = [pages[pages["user_id"] < 13], pages[(pages["user_id"] >= 13) & (pages["user_id"] < 31)],
             pages[pages["user_id"] >= 31]]
    assert list_metrics(iter(parts), item_ids, category, popularity, model_index, 40) == pytest.approx(whole)
    by_hand_novelty = np.mean([-np.log2(((popularity[item_ids == i][0] if i in item_ids else 0) + 1) / 41)
                               for i in pages["item_id"]])
    assert whole["novelty_bits"] == pytest.approx(by_hand_novelty)
    assert whole["cold_share"] == pytest.approx(np.mean([i not in item_ids or model_index[item_ids == i][0] < 0
                                                         for i in pages["item_id"]]))


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_training_edges_are_counted_per_model_item_in_pieces(chunk):
    """Only the training rows count, twins included, whatever the piece size; items never trained on count 0."""
    from homerank.homepage.catalogue import train_edges_per_model_item

    edges = pd.DataFrame({"item_index": [0, 2, 2, 2, 4, 1],
                          "split": ["train", "train", "train", "test", "valid", "train"]})
    assert train_edges_per_model_item(edges, chunk=chunk).tolist() == [1, 1, 2]
    by_id = edges.assign(item_id=edges["item_index"] + 100).drop(columns="item_index")  # the ids mapped instead
    item_index = pd.DataFrame({"item_id": [104, 102, 101, 100], "item_index": [4, 2, 1, 0]})
    assert train_edges_per_model_item(by_id, item_index, chunk).tolist() == [1, 1, 2]
