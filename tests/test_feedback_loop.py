"""The feedback loop (issue 19 item 6): impressions, simulated shoppers, click-through and position bias by hand,
id maps extended and never re-encoded, a warm-started layer 0, and the loop end to end on a tiny generated log."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from homerank.engine.encode import extend_index, index_of
from homerank.engine.feedback import click_through, feedback_stats
from homerank.engine.synthetic import SyntheticSpec, make_catalogue
from homerank.engine.synthetic_feedback import Shoppers, examination, react, relevance
from homerank.engine.synthetic_model import ITEM_ID_OFFSET, USER_ID_OFFSET
from homerank.gnn.config import TrainConfig
from homerank.gnn.model import PreviousModel
from homerank.gnn.train import TrainData, new_model
from homerank.jobs.stage_homepage import impressions_of

EVENT_TYPES = ["view", "click", "cart", "purchase"]


def hand_impressions() -> pd.DataFrame:
    """Two users' pages: user 1 sees items 10, 11 (row 1, for_you) and 12 (row 2, trending); user 2 sees 10, 13
    (row 1) and 14 (row 2). Run id "r"."""
    return pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 2], "item_id": [10, 11, 12, 10, 13, 14],
                         "section": ["for_you", "for_you", "trending", "for_you", "for_you", "trending"],
                         "row": [1, 1, 2, 1, 1, 2], "slot": [1, 2, 1, 1, 2, 1], "run_id": ["r"] * 6,
                         "served_at": pd.Timestamp("2026-10-27")})


def hand_events() -> pd.DataFrame:
    """User 1 clicks 10 twice and carts it, clicks 12; user 2 clicks 13 and buys it; then three that match no
    impression: user 2's click on 13 under another run id, user 3's click on 10, user 1's click on 99."""
    return pd.DataFrame({
        "user_id": [1, 1, 1, 1, 2, 2, 2, 3, 1], "item_id": [10, 10, 10, 12, 13, 13, 13, 10, 99],
        "run_id": ["r", "r", "r", "r", "r", "r", "other", "r", "r"],
        "event_type": ["click", "click", "cart", "click", "click", "purchase", "click", "click", "click"],
        "timestamp": pd.Timestamp("2026-10-28")})


def test_click_through_and_position_bias_by_hand(tmp_path):
    stats = click_through(hand_impressions(), hand_events(), EVENT_TYPES)
    # clicked impressions: (1, 10), (1, 12), (2, 13) of 6; one carted, one bought; 6 of 9 events match
    assert stats["totals"] == {"impressions": 6, "view": 0, "click": 3, "cart": 1, "purchase": 1, "ctr": 0.5}
    assert (stats["feedback_events"], stats["matched_events"], stats["unmatched_events"]) == (9, 6, 3)
    by_section = {row["section"]: row for row in stats["by_section"]}
    assert (by_section["for_you"]["impressions"], by_section["for_you"]["click"]) == (4, 2)  # (1,10), (2,13)
    assert by_section["for_you"]["ctr"] == 0.5 and by_section["trending"]["ctr"] == 0.5  # (1,12) of 2
    by_slot = {row["slot"]: row for row in stats["by_slot"]}
    # slot 1: (1,10) (1,12) (2,10) (2,14) -> 2 clicks of 4; slot 2: (1,11) (2,13) -> 1 of 2
    assert (by_slot[1]["click"], by_slot[1]["impressions"], by_slot[2]["click"], by_slot[2]["impressions"]) == (
        2, 4, 1, 2)
    assert stats["position_bias"] == {"1": 1.0, "2": 1.0}
    by_row = {row["row"]: row for row in stats["by_row"]}
    assert (by_row[1]["click"], by_row[1]["impressions"], by_row[2]["click"]) == (2, 4, 1)
    # the partitioned version (the ETL's) gives the same figures from files
    hand_impressions().to_parquet(tmp_path / "impressions.parquet")
    events = hand_events()
    events.iloc[:5].to_parquet(tmp_path / "a.parquet")
    events.iloc[5:].astype({"user_id": str, "item_id": str}).to_csv(tmp_path / "b.csv", index=False)
    assert feedback_stats([str(tmp_path / "impressions.parquet")], [(str(tmp_path / "a.parquet"), "parquet"),
                                                                    (str(tmp_path / "b.csv"), "csv")],
                          "int64", EVENT_TYPES) == stats


def test_position_bias_is_relative_to_slot_one():
    impressions = pd.DataFrame({"user_id": [1, 2, 3, 4], "item_id": [1, 1, 2, 2], "section": "s", "row": 1,
                                "slot": [1, 1, 2, 2], "run_id": "r"})
    events = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 1, 2], "run_id": "r", "event_type": "click"})
    stats = click_through(impressions, events, EVENT_TYPES)
    assert stats["position_bias"] == {"1": 1.0, "2": 0.5}  # CTR 2/2 at slot 1, 1/2 at slot 2


def test_impressions_number_rows_in_page_order():
    page = pd.DataFrame({"user_id": [7, 7, 7, 7, 8, 8], "item_id": [1, 2, 3, 4, 1, 5],
                         "section": ["for_you", "for_you", "trending", "buy_again", "trending", "trending"],
                         "slot": [1, 2, 1, 1, 1, 2]})
    shown = impressions_of(page, "run-1", pd.Timestamp("2026-10-27 12:00"))
    assert shown["row"].tolist() == [1, 1, 2, 3, 1, 1]
    assert list(shown.columns) == ["user_id", "item_id", "section", "row", "slot", "run_id", "served_at"]
    assert (shown["run_id"] == "run-1").all() and (shown["served_at"] == pd.Timestamp("2026-10-27 12:00")).all()
    assert impressions_of(page.iloc[:0], "r", pd.Timestamp("2026-10-27")).empty


def test_extend_index_keeps_every_id_and_appends_in_sorted_order():
    previous = pd.DataFrame({"user_id": [30, 10, 20], "user_index": [2, 0, 1]})
    extended = extend_index(previous, [40, 5, 20, 40, 10], "user_id", "user_index")
    assert extended["user_id"].tolist() == [10, 20, 30, 5, 40]  # 30 kept although absent; 5 and 40 appended
    assert extended["user_index"].tolist() == [0, 1, 2, 3, 4]
    assert index_of(extended, [40, 10, 5], "user_id", "user_index").tolist() == [4, 0, 3]
    strings = extend_index(pd.DataFrame({"item_id": pd.Series(["b", "a"], dtype="string"), "item_index": [0, 1]}),
                           pd.Series(["c", "a", "0"], dtype="string"), "item_id", "item_index")
    assert strings["item_id"].tolist() == ["b", "a", "0", "c"] and str(strings["item_id"].dtype) == "string"
    with pytest.raises(ValueError, match="numbered"):
        extend_index(pd.DataFrame({"user_id": [1], "user_index": [3]}), [1], "user_id", "user_index")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 60), unique=True, max_size=30), st.lists(st.integers(0, 60), max_size=40))
def test_extend_index_property(old_ids, new_ids):
    previous = pd.DataFrame({"user_id": np.array(old_ids, dtype=np.int64),
                             "user_index": np.random.default_rng(0).permutation(len(old_ids)).astype(np.int64)})
    extended = extend_index(previous, np.array(new_ids, dtype=np.int64), "user_id", "user_index")
    # every existing (id, index) pair is kept
    kept = previous.merge(extended, on="user_id", suffixes=("_old", "_new"))
    assert len(kept) == len(previous) and (kept["user_index_old"] == kept["user_index_new"]).all()
    # the new ids follow, each once, in sorted order; the indices are 0..n-1
    appended = extended["user_id"].iloc[len(previous):].tolist()
    assert appended == sorted(set(new_ids) - set(old_ids))
    assert extended["user_index"].tolist() == list(range(len(extended)))


def test_a_warm_start_starts_from_the_previous_rows():
    data = TrainData(num_users=5, num_items=4, train_users=torch.tensor([0, 1]), train_items=torch.tensor([0, 1]),
                     adjacency=torch.eye(9).to_sparse_csr())
    config = TrainConfig(embedding_dim=3)
    torch.manual_seed(1)
    cold = new_model(data, config).lightgcn.embedding.weight.detach().clone()
    previous = PreviousModel(users=torch.full((3, 3), 7.0), items=torch.full((2, 3), -7.0))
    data.warm_start = previous
    torch.manual_seed(1)
    warm = new_model(data, config).lightgcn.embedding.weight.detach()
    assert torch.equal(warm[:3], previous.users) and torch.equal(warm[5:7], previous.items)
    assert torch.equal(warm[3:5], cold[3:5]) and torch.equal(warm[7:], cold[7:])  # new ids: their random rows
    data.warm_start = PreviousModel(users=torch.zeros(6, 3), items=torch.zeros(1, 3))  # more users than the model
    with pytest.raises(ValueError, match="does not fit"):
        new_model(data, config)


SPEC = SyntheticSpec(users=300, items=120, events=6000, users_per_partition=150, seed=11)


def shown(spec: SyntheticSpec, users: int = 60) -> pd.DataFrame:
    rows = []
    for user in range(users):
        for slot, item in enumerate(np.random.default_rng(user).choice(spec.items, 10, replace=False), start=1):
            rows.append((user + USER_ID_OFFSET, int(item) + ITEM_ID_OFFSET, "for_you" if slot <= 5 else "trending",
                         1 if slot <= 5 else 2, (slot - 1) % 5 + 1))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "section", "row", "slot"])
    return frame.assign(run_id="r1", served_at=pd.Timestamp("2026-10-27"))


def test_simulated_shoppers_are_deterministic_by_seed():
    catalogue, world = make_catalogue(SPEC)
    prices = catalogue["price"].to_numpy()
    impressions = shown(SPEC)
    first = react(impressions, SPEC, world, prices, 0, 5, Shoppers())
    again = react(impressions, SPEC, world, prices, 0, 5, Shoppers())
    other = react(impressions, SPEC, world, prices, 0, 6, Shoppers())
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    assert set(first["event_type"]) <= {"click", "cart", "purchase"} and (first["event_type"] == "click").any()
    assert (first["timestamp"] > pd.Timestamp("2026-10-27")).all()
    # every event is on an impression, with its section, row, slot and run id; purchases carry the price
    merged = first.merge(impressions, on=["user_id", "item_id", "section", "row", "slot", "run_id"])
    assert len(merged) == len(first)
    bought = first[first["event_type"] == "purchase"]
    assert np.allclose(bought["value"], prices[bought["item_id"] - ITEM_ID_OFFSET])
    # the log's columns first, so the ETL reads it with the generated log
    assert list(first.columns[:6]) == ["user_id", "item_id", "event_type", "timestamp", "session_id", "value"]


def test_reactions_follow_position_and_taste():
    shoppers = Shoppers(slot_decay=0.7, row_decay=0.8)
    exam = examination(np.array([1, 1, 1, 2]), np.array([1, 2, 5, 1]), shoppers)
    assert exam[0] == 1.0 and exam[0] > exam[1] > exam[2] and exam[3] == pytest.approx(0.8)
    _, world = make_catalogue(SPEC)
    users = np.repeat(np.arange(20), SPEC.items)
    items = np.tile(np.arange(SPEC.items), 20)
    rel = relevance(SPEC, world, users, items).reshape(20, SPEC.items)
    assert rel.min() >= 0 and np.allclose(rel.max(axis=1), 1.0)  # each user's favourite cell is 1
    # a user's relevance is the same for the items of one (category, segment) cell
    cell = world.item_cell
    for user in range(3):
        for c in np.unique(cell):
            assert np.ptp(rel[user, cell == c]) == 0


@pytest.mark.slow
def test_the_feedback_loop_end_to_end(homepage_run, tmp_path):
    """Serve (the tiny run), simulate shoppers, then an incremental ETL + training warm-started from the run."""
    from homerank.jobs.cli import main

    run, log = homepage_run
    config = run.parent / "c.yaml"
    impressions = pd.read_parquet(run / "impressions")
    page = pd.read_parquet(run / "homepage")
    assert len(impressions) == len(page)
    pd.testing.assert_frame_equal(impressions[["user_id", "item_id", "slot"]], page[["user_id", "item_id", "slot"]])
    assert impressions["run_id"].nunique() == 1 and impressions["run_id"].iloc[0] == (run / "run_id.txt").read_text(
    ).strip()
    feedback = tmp_path / "feedback"
    assert main(["simulate-feedback", "--run", str(run), "--out", str(feedback), "--seed", "3", "--quiet"]) == 0
    summary = json.loads((feedback / "summary.json").read_text())
    assert summary["impressions"] == len(impressions) and summary["click"] > 0
    events = pd.read_parquet(feedback / "events")

    warm = tmp_path / "warm"
    stage = ["--out", str(warm), "--config", str(config), "--quiet"]
    assert main(["etl", "--input", str(log / "events"), "--input", str(feedback / "events"), *stage,
                 "--warm-start", str(run), "--set", "warm_start.epochs=2"]) == 0
    # every existing id keeps its index; new ids come after them
    for name in ("user_index", "item_index"):
        index_column = name
        before = pd.read_parquet(run / f"{name}.parquet").sort_values(index_column)
        after = pd.read_parquet(warm / f"{name}.parquet").sort_values(index_column)
        pd.testing.assert_frame_equal(after.iloc[: len(before)].reset_index(drop=True),
                                      before.reset_index(drop=True))
        assert after[index_column].tolist() == list(range(len(after)))
    stats = json.loads((warm / "etl" / "stats.json").read_text())
    assert stats["warm_start"]["users"]["kept"] == len(pd.read_parquet(run / "user_index.parquet"))
    assert stats["rows"]["kept"] > json.loads((run / "etl" / "stats.json").read_text())["rows"]["kept"]
    # the edges carry the extended indices, and the split is the cold ETL's on the same logs
    edges = pd.read_parquet(warm / "etl" / "edges")
    users = pd.read_parquet(warm / "user_index.parquet")
    joined = edges.merge(users, on="user_id", suffixes=("", "_map"))
    assert len(joined) == len(edges) and (joined["user_index"] == joined["user_index_map"]).all()
    cold = tmp_path / "cold"
    assert main(["etl", "--input", str(log / "events"), "--input", str(feedback / "events"), "--out", str(cold),
                 "--config", str(config), "--quiet"]) == 0
    cold_edges = pd.read_parquet(cold / "etl" / "edges")
    key = ["user_id", "item_id"]
    pd.testing.assert_frame_equal(edges.sort_values(key)[[*key, "split", "weight"]].reset_index(drop=True),
                                  cold_edges.sort_values(key)[[*key, "split", "weight"]].reset_index(drop=True))
    # the feedback: CTR and position bias of the run's homepage, as computed by hand from the two files
    feedback_stats_file = json.loads((warm / "feedback" / "stats.json").read_text())
    expected = click_through(impressions, events.assign(event_type=events["event_type"].astype(str)), EVENT_TYPES)
    for key_ in ("totals", "by_section", "by_slot", "by_row", "position_bias", "matched_events"):
        assert feedback_stats_file[key_] == expected[key_]
    assert feedback_stats_file["unmatched_events"] == 0
    # train from the previous run's layer 0, at most warm_start.epochs epochs (the stages read RUN/config.yaml)
    assert main(["graph", "--out", str(warm), "--quiet"]) == 0 and main(["train", "--out", str(warm), "--quiet"]) == 0
    train = json.loads((warm / "train" / "summary.json").read_text())
    assert train["warm_start"]["users_from_previous"] == stats["warm_start"]["users"]["kept"]
    assert train["warm_start"]["max_epochs"] == 2 and train["epochs"] <= 2
    assert train["warm_start"]["lr"] == pytest.approx(0.01 * 0.4)  # train.lr x warm_start.lr_factor
    report = (warm / "report.md").read_text()
    assert "## Warm start" in report and "## Feedback on the previous homepage" in report
    assert "Clicks by slot" in report


def test_warm_start_user_mistakes(homepage_run, tmp_path, capsys):
    from homerank.jobs.cli import main

    run, log = homepage_run
    config = run.parent / "c.yaml"
    base = ["etl", "--input", str(log / "events"), "--config", str(config), "--quiet"]
    (tmp_path / "z").mkdir()
    assert main([*base, "--out", str(tmp_path / "z"), "--warm-start", str(tmp_path / "z")]) == 2
    assert "this run's own directory" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x"), "--warm-start", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--out", str(tmp_path / "y"), "--warm-start", str(tmp_path / "empty")]) == 2
    assert "user_index.parquet: not found" in capsys.readouterr().err
    assert main(["simulate-feedback", "--run", str(tmp_path / "empty"), "--out", str(tmp_path / "f")]) == 2
    assert "no impressions" in capsys.readouterr().err
