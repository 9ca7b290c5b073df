"""The public Python API end to end on a tiny hand-made log, through `homerank` names only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import homerank

OVERRIDES = {"seed": 5, "interactions.min_user_interactions": 2, "interactions.min_item_interactions": 2,
             "train.embedding_dim": 8, "train.num_layers": 1, "train.epochs": 3, "train.batch_size": 256,
             "train.threads": 2, "rank.k": 5, "homepage.new_arrival_days": 400.0}


def tiny_events(users: int = 60, items: int = 30, seed: int = 0) -> pd.DataFrame:
    """Two taste communities (even users like even items), views and a few purchases over 30 days."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        liked = np.arange(user % 2, items, 2)
        for item in rng.choice(liked, size=8, replace=False):
            day = rng.integers(0, 30)
            rows.append((1000 + user, 500 + int(item), "view", pd.Timestamp("2026-10-01") + pd.Timedelta(days=day)))
            if rng.random() < 0.3:
                rows.append((1000 + user, 500 + int(item), "purchase",
                             pd.Timestamp("2026-10-01") + pd.Timedelta(days=day, hours=1)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    events = tiny_events()
    catalogue = pd.DataFrame({"item_id": np.arange(500, 530), "category": [f"c{i % 3}" for i in range(30)],
                              "title": [f"item {i}" for i in range(30)], "price": np.linspace(5, 50, 30)})
    run = homerank.run(events, out=out, items=catalogue, device="cpu", progress=False, **OVERRIDES)
    return run, events


def test_run_from_a_pandas_frame_gives_a_run_with_every_output(api_run):
    run, events = api_run
    assert isinstance(run, homerank.Run)
    assert run.config.train.epochs == 3 and run.config.rank.k == 5  # the dotted overrides were applied
    assert set(run.metrics["test"]) >= {"recall@20", "ndcg@20"}
    assert run.metrics["rows"]["in"] == len(events)
    rankings = run.rankings()
    assert list(rankings.columns) == ["user_id", "rank", "item_id", "score"]
    assert rankings.groupby("user_id").size().max() == 5
    page = run.homepage(1003)
    assert len(page) and set(page["user_id"]) == {1003} and page["reason"].str.len().gt(0).all()
    assert run.homepage("no such user").empty
    reopened = homerank.Run.open(run.path)
    assert reopened.metrics == run.metrics


def test_embeddings_are_keyed_by_the_original_ids(api_run):
    run, events = api_run
    users, items = run.embeddings()
    assert users.index.name == "user_id" and items.index.name == "item_id"
    assert users.shape[1] == items.shape[1] == 8
    assert set(users.index) <= set(events["user_id"]) and set(items.index) <= set(events["item_id"])


def test_recommend_answers_like_the_batch_job_and_says_who_got_the_fallback(api_run):
    run, events = api_run
    rankings = run.rankings()
    users = [1004, 1001, 1004]  # a duplicate is answered once, in the order asked
    answer = run.recommend(users, k=5)
    assert answer["user_id"].drop_duplicates().tolist() == [1004, 1001]
    assert set(answer["source"]) == {"model"}
    for user in (1004, 1001):
        batch = rankings[rankings["user_id"] == user].sort_values("rank")["item_id"].tolist()
        assert answer[answer["user_id"] == user]["item_id"].tolist() == batch
    # purchased items are never recommended with exclude_seen; the raw scores may rank them without it
    bought = set(events[(events["user_id"] == 1004) & (events["event_type"] == "purchase")]["item_id"])
    assert not bought & set(answer[answer["user_id"] == 1004]["item_id"])
    assert len(run.recommend(1004, k=30, exclude_seen=False)) == 30
    # a user the run never saw gets the popularity ranking, and the answer says so; ids may come as strings
    stranger = run.recommend(["424242", "1004"], k=3)
    assert stranger.groupby("user_id")["source"].first().to_dict() == {424242: "popularity:unknown_user",
                                                                         1004: "model"}
    assert stranger[stranger["user_id"] == 424242]["score"].is_monotonic_decreasing


def test_user_mistakes_raise_homerank_error(tmp_path):
    with pytest.raises(homerank.HomerankError, match="train.nope"):
        homerank.run(tiny_events(), out=tmp_path / "r", device="cpu", **{"train.nope": 1})
    with pytest.raises(homerank.HomerankError, match="train.epochs"):
        homerank.run(tiny_events(), out=tmp_path / "r", device="cpu", **{"train.epochs": -1})
    with pytest.raises(homerank.HomerankError, match="events"):
        homerank.run(object(), out=tmp_path / "r", device="cpu")
    with pytest.raises(homerank.HomerankError, match="not a homerank run directory"):
        homerank.Run.open(tmp_path)


def test_run_from_a_dask_frame_writes_it_partition_by_partition(tmp_path):
    import dask.dataframe as dd

    events = dd.from_pandas(tiny_events(seed=1), npartitions=3)
    run = homerank.run(events, out=tmp_path / "run", config={"train": {"epochs": 2}}, device="cpu", progress=False,
                       **{**OVERRIDES, "train.epochs": 2})
    written = sorted(p.name for p in (tmp_path / "run" / "input" / "events").glob("*.parquet"))
    assert len(written) == 3
    assert run.metrics["rows"]["in"] == len(events) and run.config.train.epochs == 2
    assert run.recommend([1001], k=3)["source"].tolist() == ["model"] * 3
