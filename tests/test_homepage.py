"""The homepage rules, asserted over every user of an end-to-end run on a tiny synthetic log."""

import json

import numpy as np
import pandas as pd
import pytest


@pytest.mark.slow
def test_every_page_follows_the_rules(homepage_run):
    run, log = homepage_run
    page = pd.read_parquet(run / "homepage")
    assert list(page.columns) == ["user_id", "section", "section_title", "slot", "item_id", "score", "reason"]
    catalogue = pd.read_parquet(log / "items.parquet").set_index("item_id")
    interactions = pd.read_parquet(run / "etl" / "interactions.parquet")
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
    # at most max_per_category items of one category per row (trending rows are one category by design)
    page["category"] = catalogue.loc[page["item_id"], "category"].to_numpy()
    capped = page[~page["section"].isin(["trending_in_category", "buy_again"])]
    assert capped.groupby(["user_id", "section", "category"]).size().max() <= 2
    # slots are 1..n within each row and never exceed the configured count
    limits = {"for_you": 10, "because_you_viewed": 8, "trending_in_category": 8, "new_arrivals": 8, "buy_again": 6}
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
    interactions = pd.read_parquet(run / "etl" / "interactions.parquet")
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
