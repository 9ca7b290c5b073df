"""The homepage's vectors for items the model never saw: the train stage's content-only embedding
(``train/cold_items.parquet``) where there is one, the category and price band's mean vector otherwise; by hand
on frames, then end to end on a tiny generated log with ``train.content`` on (the file there, then removed)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from homerank.engine.errors import HomerankError
from homerank.homepage.build import build_pages
from homerank.homepage.catalogue import build_catalogue, inductive_item_vectors, item_vectors
from homerank.homepage.config import HomepageConfig, SectionConfig
from homerank.jobs.artifacts import read_embedding_table

NOW = pd.Timestamp("2026-03-10")
DAY = pd.Timedelta(days=1)


def _frames() -> tuple:
    """Items 10-14 in the model; 15 and 16 are new arrivals it never saw, both in category B, price band 3
    (price quartiles of 1..7: 12 and 13, the model's B items, are in band 1)."""
    catalogue = pd.DataFrame({
        "item_id": [10, 11, 12, 13, 14, 15, 16], "category": ["A", "A", "B", "B", "Coffee", "B", "B"],
        "title": [f"t{i}" for i in range(10, 17)], "price": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "created_at": [NOW - 400 * DAY] * 5 + [NOW - DAY, NOW - 2 * DAY], "in_stock": [True] * 7})
    interactions = pd.DataFrame({
        "user_id": ["u", "u", "u", "v", "v", "v", "c"], "item_id": [10, 14, 12, 11, 12, 13, 11],
        "weight": [1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        "first_ts": [NOW - 3 * DAY, NOW - 2 * DAY, NOW - DAY / 2, NOW - 2 * DAY, NOW - DAY, NOW - DAY, NOW - DAY],
        "last_ts": [NOW - 3 * DAY, NOW - 2 * DAY, NOW - DAY / 2, NOW - 2 * DAY, NOW - DAY, NOW - DAY, NOW - DAY],
        "n_view": [1, 0, 1, 1, 1, 1, 1], "n_purchase": [0, 1, 0, 0, 0, 0, 0]})
    item_index = pd.DataFrame({"item_id": [10, 11, 12, 13, 14], "item_index": [0, 1, 2, 3, 4]})
    user_index = pd.DataFrame({"user_id": ["u", "v"], "user_index": [0, 1]})
    edges = interactions[interactions["user_id"] != "c"].merge(user_index).merge(item_index).assign(split="train")
    generator = torch.Generator().manual_seed(0)
    user_embeddings, item_embeddings = torch.randn(2, 4, generator=generator), torch.randn(5, 4, generator=generator)
    candidates = np.array([[4, 0, 1, 2, 3], [2, 1, 0, 3, 4]])
    scores = np.tile(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), (2, 1))
    return (candidates, scores, item_embeddings, user_embeddings, interactions, edges, user_index, item_index,
            catalogue, NOW)


# new arrivals first: later, for_you's popularity top-up would take the new items too
SETTINGS = HomepageConfig(max_per_category=5, repeat_purchase_categories=["Coffee"], new_arrival_days=7, sections=[
    SectionConfig(kind="new_arrivals", title="New", slots=4), SectionConfig(kind="for_you", title="For you"),
    SectionConfig(kind="because_you_viewed", title="Because you viewed {item_title}"),
    SectionConfig(kind="buy_again", title="Again")])
CONTENT_15 = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)  # item 15's cold embedding; 16 has none


def test_a_cold_item_with_a_content_vector_gets_it_and_the_others_the_mean():
    frames = _frames()
    catalogue = build_catalogue(frames[8], frames[4], frames[7], frames[5], NOW, SETTINGS)
    item_embeddings = frames[2]
    # 99 is a cold item outside this catalogue, 12 a model item: the model's own vector wins over a content row
    cold = (pd.Series([99, 15, 12]), np.concatenate([np.ones((1, 4)), CONTENT_15, np.zeros((1, 4))]))
    vectors, source = item_vectors(catalogue, item_embeddings, cold)
    position = catalogue.position()
    mean_vectors = inductive_item_vectors(catalogue, item_embeddings)
    assert torch.equal(vectors[position[15]], torch.from_numpy(CONTENT_15[0]))
    assert not torch.allclose(vectors[position[15]], mean_vectors[position[15]])
    # 16 keeps its mean vector, as before: no model item of B shares its price band (3), so B's (12 and 13)
    assert torch.equal(vectors[position[16]], mean_vectors[position[16]])
    assert torch.allclose(vectors[position[16]], item_embeddings[[2, 3]].mean(0))
    assert torch.equal(vectors[position[12]], item_embeddings[2])
    assert source.tolist() == [0, 0, 0, 0, 0, 1, 2]
    # without cold items: exactly the mean vectors of before
    plain, plain_source = item_vectors(catalogue, item_embeddings)
    assert torch.equal(plain, mean_vectors) and plain_source.tolist() == [0, 0, 0, 0, 0, 2, 2]


def test_string_ids_match_and_a_wrong_width_is_a_user_error():
    frames = list(_frames())
    frames[8] = frames[8].assign(item_id=frames[8]["item_id"].astype(str))
    frames[4] = frames[4].assign(item_id=frames[4]["item_id"].astype(str))
    frames[5] = frames[5].assign(item_id=frames[5]["item_id"].astype(str))
    frames[7] = frames[7].assign(item_id=frames[7]["item_id"].astype(str))
    catalogue = build_catalogue(frames[8], frames[4], frames[7], frames[5], NOW, SETTINGS)
    vectors, source = item_vectors(catalogue, frames[2], (pd.Series(["15"], dtype="string"), CONTENT_15))
    assert torch.equal(vectors[catalogue.position()["15"]], torch.from_numpy(CONTENT_15[0]))
    assert source.tolist().count(1) == 1
    with pytest.raises(HomerankError, match="cold_items.parquet: vectors of width 2"):
        item_vectors(catalogue, frames[2], (pd.Series(["15"]), np.zeros((1, 2), dtype=np.float32)))


def test_new_arrivals_are_scored_with_the_content_vector_and_say_so():
    frames = _frames()
    homepage = build_pages(*frames, SETTINGS, cold_items=(pd.Series([15]), CONTENT_15))
    page = homepage.page
    new = page[page["section"] == "new_arrivals"].set_index(["user_id", "item_id"])
    user_embeddings = frames[3]
    for user, row in (("u", 0), ("v", 1)):
        assert new.loc[(user, 15), "reason"] == "new_arrival:cold_start_content"
        content_score = float(user_embeddings[row] @ torch.from_numpy(CONTENT_15[0]))
        assert new.loc[(user, 15), "score"] == pytest.approx(content_score, rel=1e-5)
        assert new.loc[(user, 16), "reason"] == "new_arrival:cold_start_category_price_band"
        mean_score = float(user_embeddings[row] @ frames[2][[2, 3]].mean(0))
        assert new.loc[(user, 16), "score"] == pytest.approx(mean_score, rel=1e-5)
        # the explanation is the same family as the mean vector's: a shopper reads about the item, not the vector
        assert new.loc[(user, 15), "explanation"].startswith("New in B")
    assert (page.loc[page["user_id"] == "c", "reason"].str.startswith("new_arrival:cold_start")).sum() == 0
    assert homepage.stats["item_vectors"] == {
        "new_arrivals": {"model": 0, "content": 1, "category_price_band_mean": 1},
        "catalogue": {"model": 5, "content": 1, "category_price_band_mean": 1}}
    assert homepage.stats["rule_check"]["passed"]
    # without cold items: the mean vector for both, as before
    before = build_pages(*frames, SETTINGS)
    assert before.stats["item_vectors"]["new_arrivals"] == {"model": 0, "content": 0, "category_price_band_mean": 2}
    model_users_new = (before.page["section"] == "new_arrivals") & (before.page["user_id"] != "c")
    assert set(before.page.loc[model_users_new, "reason"]) == {"new_arrival:cold_start_category_price_band"}
    # the rest of the page does not depend on the new items' vectors
    others = ["for_you", "because_you_viewed", "buy_again"]
    pd.testing.assert_frame_equal(page[page["section"].isin(others)].reset_index(drop=True),
                                  before.page[before.page["section"].isin(others)].reset_index(drop=True))


CONTENT_CONFIG = """
seed: 3
device: cpu
interactions:
  min_user_interactions: 3
  min_item_interactions: 3
train:
  embedding_dim: 8
  num_layers: 2
  epochs: 2
  batch_size: 1024
  checkpoint_every: 2
  threads: 2
  content: {features: [category, price]}
rank: {k: 10}
homepage:
  new_arrival_days: 30
"""


@pytest.fixture(scope="module")
def content_run(tmp_path_factory):
    """``homerank run`` with train.content on a tiny generated log, once for this module: (run, log, config).
    Read-only: the tests below change copies of it."""
    from homerank.engine.synthetic import SyntheticSpec, generate
    from homerank.jobs.cli import main

    root = tmp_path_factory.mktemp("content_run")
    log = root / "log"
    generate(log, SyntheticSpec(users=150, items=100, events=4_000, users_per_partition=150, seed=5))
    config = root / "c.yaml"
    config.write_text(CONTENT_CONFIG + f"ingest: {{catalogue: {log / 'items.parquet'}}}\n")
    run = root / "run"
    assert main(["run", "--input", str(log / "events"), "--out", str(run), "--config", str(config), "--quiet"]) == 0
    return run, log, config


@pytest.mark.slow
def test_a_content_run_serves_cold_items_their_content_vectors_and_works_without_the_file(content_run, tmp_path):
    from homerank.jobs.cli import main

    source, log, _ = content_run
    run = Path(shutil.copytree(source, tmp_path / "run"))  # the file is removed below: a copy of the shared run
    cold_file = run / "train" / "cold_items.parquet"
    cold_ids, cold_vectors = read_embedding_table(cold_file, "item_id")
    stats = json.loads((run / "homepage_stats.json").read_text())
    counts = stats["item_vectors"]
    catalogue = pd.read_parquet(log / "items.parquet")
    # every catalogue item outside the graph has a content vector: no mean vector is left for them
    assert counts["catalogue"]["content"] == len(cold_ids) > 0
    assert counts["catalogue"]["category_price_band_mean"] == 0
    assert counts["catalogue"]["model"] + len(cold_ids) == len(catalogue)
    page = pd.read_parquet(run / "homepage")
    cold_slots = page[page["reason"] == "new_arrival:cold_start_content"]
    assert counts["new_arrivals"]["content"] > 0 and len(cold_slots) > 0
    # their score is e_u . (the cold item's content vector)
    users, user_vectors = read_embedding_table(run / "embeddings" / "users.parquet", "user_id")
    user_row = pd.Series(np.arange(len(users)), index=users.to_numpy())
    cold_row = pd.Series(np.arange(len(cold_ids)), index=cold_ids.to_numpy())
    expected = np.einsum("nd,nd->n", user_vectors[user_row[cold_slots["user_id"]].to_numpy()],
                         cold_vectors[cold_row[cold_slots["item_id"]].to_numpy()])
    np.testing.assert_allclose(cold_slots["score"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    # without the file (a run trained before train.content), the homepage is built as before: mean vectors
    cold_file.unlink()
    assert main(["homepage", "--out", str(run), "--quiet"]) == 0
    stats = json.loads((run / "homepage_stats.json").read_text())
    assert stats["item_vectors"]["catalogue"]["content"] == 0 and stats["rule_check"]["passed"]
    assert stats["item_vectors"]["new_arrivals"]["category_price_band_mean"] == counts["new_arrivals"]["content"]
    page = pd.read_parquet(run / "homepage")
    assert not page["reason"].eq("new_arrival:cold_start_content").any()
    assert page["reason"].eq("new_arrival:cold_start_category_price_band").any()


def test_train_declares_cold_items_as_an_output_only_with_content_features():
    from homerank.jobs.config import JobConfig
    from homerank.jobs.pipeline import stage_outputs

    assert "cold_items" not in stage_outputs("train", JobConfig())
    content = JobConfig.model_validate({"train": {"content": {"features": ["category"]}}})
    assert stage_outputs("train", content) == ("scorer", "train_summary", "cold_items")
    unwritten = JobConfig.model_validate({"train": {"content": {"features": ["category"], "write_cold_items": False}}})
    assert "cold_items" not in stage_outputs("train", unwritten)


@pytest.mark.slow
def test_resume_retrains_when_cold_items_is_missing(content_run, tmp_path):
    """``run --resume`` with ``train.content``: train/cold_items.parquet gone means train (and what follows) reruns,
    the stages before it do not."""
    from homerank.jobs.cli import main

    source, log, config = content_run
    run = Path(shutil.copytree(source, tmp_path / "run"))  # the finished run, as `run` left it
    args = ["run", "--input", str(log / "events"), "--out", str(run), "--config", str(config), "--quiet"]
    cold_file = run / "train" / "cold_items.parquet"
    cold_file.unlink()
    start = len((run / "logs" / "homerank.log").read_text())
    assert main([*args, "--resume"]) == 0
    text = (run / "logs" / "homerank.log").read_text()[start:]  # what the resumed run logged
    assert "stage etl: up to date" in text and "stage graph: up to date" in text
    assert "stage train: rerun, train/cold_items.parquet: missing" in text
    assert cold_file.exists()
    assert json.loads((run / "homepage_stats.json").read_text())["item_vectors"]["catalogue"]["content"] > 0
