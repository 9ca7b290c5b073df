"""Merchandising boosts and pins: the file parser by hand, then the rules over every page of a rerun."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from homerank.engine.errors import HomerankError
from homerank.homepage.merchandising import load_merchandising
from homerank.jobs.artifacts import load_embeddings
from homerank.jobs.rundir import RunDir

ITEMS = np.array([10, 11, 12, 13])
CATEGORIES = np.array(["Shoes", "Shoes", "Books", "Toys"])
SECTIONS = ["for_you", "new_arrivals"]
AS_OF = pd.Timestamp("2026-03-10 15:00")


def _load(tmp_path, text: str):
    path = tmp_path / "merch.csv"
    path.write_text(text)
    return load_merchandising(path, ITEMS, CATEGORIES, SECTIONS, AS_OF)


def test_active_rules_resolve_to_catalogue_positions(tmp_path):
    merch = _load(tmp_path, (
        "rule,item_id,category,weight,section,slot,start,end\n"
        "boost,,Shoes,1.5,,,2026-03-01,2026-03-10\n"      # ends today: still active (inclusive day)
        "boost,12,,-2,for_you,,,\n"
        "pin,13,,,new_arrivals,1,2026-03-10,\n"
        "boost,,Books,4,,,2026-03-11,\n"                  # starts tomorrow: inactive
        "pin,10,,,for_you,2,,2026-03-09\n"))              # ended yesterday: inactive
    assert merch.stats == {"rules": 5, "active_boosts": 2, "active_pins": 1, "inactive": 2}
    assert merch.boost_for("new_arrivals").tolist() == [1.5, 1.5, 0.0, 0.0]
    assert merch.boost_for("for_you").tolist() == [1.5, 1.5, -2.0, 0.0]
    assert [(p.section, p.slot, p.position, p.rule) for p in merch.pins] == [("new_arrivals", 1, 3, 3)]
    assert merch.pins_for("for_you") == []


@pytest.mark.parametrize("row, expected", [
    ("promote,10,,1,,,,", "row 1: column 'rule'"),
    ("boost,10,Shoes,1,,,,", "row 1: column 'item_id': give exactly one"),
    ("boost,99,,1,,,,", "row 1: column 'item_id': unknown item '99'"),
    ("boost,,Hats,1,,,,", "row 1: column 'category': unknown category 'Hats'"),
    ("boost,10,,lots,,,,", "row 1: column 'weight'"),
    ("boost,10,,1,footer,,,", "row 1: column 'section'"),
    ("pin,,Shoes,,for_you,1,,", "row 1: column 'item_id': a pin needs an item_id"),
    ("pin,10,,,,1,,", "row 1: column 'section'"),
    ("pin,10,,,for_you,0,,", "row 1: column 'slot'"),
    ("boost,10,,1,,,2026-03-05,2026-03-01", "row 1: column 'end': ends before it starts"),
    ("boost,10,,1,,,soon,", "row 1: column 'start': not a date"),
])
def test_bad_rows_name_the_file_row_and_column(tmp_path, row, expected):
    with pytest.raises(HomerankError) as error:
        _load(tmp_path, "rule,item_id,category,weight,section,slot,start,end\n" + row + "\n")
    assert "merch.csv" in str(error.value) and expected in str(error.value)


def test_clashing_pins_and_unknown_columns_are_errors(tmp_path):
    with pytest.raises(HomerankError, match="row 2: column 'slot': slot 1 of 'for_you' is already pinned"):
        _load(tmp_path, "rule,item_id,section,slot\npin,10,for_you,1\npin,11,for_you,1\n")
    with pytest.raises(HomerankError, match="header column 3 of 3: not a merchandising column"):
        _load(tmp_path, "rule,item_id,colour\nboost,10,red\n")
    with pytest.raises(HomerankError, match="merchandising file not found"):
        load_merchandising(tmp_path / "missing.csv", ITEMS, CATEGORIES, SECTIONS, AS_OF)


def _intra_row_cosine(page: pd.DataFrame, vectors: dict, section: str) -> float:
    values = []
    for _, rows in page[page["section"] == section].groupby("user_id"):
        matrix = np.stack([vectors[i] for i in rows["item_id"]])
        sims = matrix @ matrix.T
        n = len(matrix)
        if n > 1:
            values.append((sims.sum() - np.trace(sims)) / (n * (n - 1)))
    return float(np.mean(values))


@pytest.mark.slow
def test_pins_boosts_and_mmr_over_every_page(homepage_run, tmp_path):
    from homerank.jobs.cli import main

    source, log = homepage_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    before = pd.read_parquet(run / "homepage")
    catalogue = pd.read_parquet(log / "items.parquet").set_index("item_id")
    interactions = pd.read_parquet(run / "etl" / "interactions")
    # pin the most popular in-stock item at slot 2 of for_you; boost the least shown category in for_you
    stocked = catalogue[catalogue["in_stock"]]
    popular = interactions[interactions["item_id"].isin(stocked.index)].groupby("item_id")["user_id"].nunique()
    pinned = popular.idxmax()
    for_you = before[before["section"] == "for_you"]
    shown = catalogue.loc[for_you["item_id"], "category"].value_counts()
    boosted = shown.index[-1]
    merch = tmp_path / "merch.csv"
    merch.write_text("rule,item_id,category,weight,section,slot,start,end\n"
                     f"pin,{pinned},,,for_you,2,,\n"
                     f"boost,,{boosted},3,for_you,,,\n"
                     f"pin,{popular.index[1]},,,for_you,1,2000-01-01,2000-01-02\n")  # long expired
    config = (run / "config.yaml").read_text()
    config = config.replace("  merchandising: null", f"  merchandising: {merch}")
    config = config.replace("  diversity: category_cap", "  diversity: mmr")
    config = config.replace("mmr_lambda: 0.7", "mmr_lambda: 0.3")
    (tmp_path / "c.yaml").write_text(config)
    assert main(["homepage", "--out", str(run), "--config", str(tmp_path / "c.yaml"), "--quiet"]) == 0
    page = pd.read_parquet(run / "homepage")
    stats = json.loads((run / "homepage_stats.json").read_text())
    assert stats["merchandising"]["active_pins"] == 1 and stats["merchandising"]["inactive"] == 1
    assert stats["diversity"] == "mmr(lambda=0.3)" and stats["rule_check"]["passed"]
    # the page rules still hold for every user
    assert set(page["user_id"]) == set(before["user_id"])
    assert not page.duplicated(["user_id", "item_id"]).any()
    assert catalogue.loc[page["item_id"], "in_stock"].all()
    bought = interactions[interactions["n_purchase"] > 0][["user_id", "item_id"]]
    assert (page.merge(bought, on=["user_id", "item_id"])["section"] == "buy_again").all()
    # the pin: slot 2 of for_you for every user who has not bought it, and nowhere else on any page
    buyers = set(bought.loc[bought["item_id"] == pinned, "user_id"])
    at_pin = page[(page["item_id"] == pinned)]
    assert (at_pin["section"] == "for_you").all() and (at_pin["slot"] == 2).all()
    assert set(at_pin["user_id"]) == set(page["user_id"]) - buyers
    assert at_pin["reason"].str.startswith("pin:merchandising:row1").all()
    assert stats["merchandising"]["pinned_slots"] == len(at_pin)
    # the boost lifts its category in for_you, and says so in the reason
    after_for_you = page[page["section"] == "for_you"]
    share = lambda rows: float((catalogue.loc[rows["item_id"], "category"] == boosted).mean())  # noqa: E731
    assert share(after_for_you) > share(for_you)
    lifted = after_for_you[after_for_you["reason"].str.contains(";boost:+3", regex=False)]
    assert len(lifted) > 0 and (catalogue.loc[lifted["item_id"], "category"] == boosted).all()
    # MMR with a low lambda makes rows less self-similar than the capped baseline (learned item vectors)
    embeddings = load_embeddings(RunDir(run))[1].numpy()  # the item embeddings of the run's scorer
    index = pd.read_parquet(run / "item_index.parquet").sort_values("item_index")
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    vectors = dict(zip(index["item_id"], unit, strict=True))
    known = lambda rows: rows[rows["item_id"].isin(vectors)]  # noqa: E731
    section = "because_you_viewed"
    assert _intra_row_cosine(known(page), vectors, section) < _intra_row_cosine(known(before), vectors, section)
