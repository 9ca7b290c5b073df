"""The lightgcn input format on a tiny hand-made split, through the real pipeline."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from homerank.engine.backend import resolve_backend
from homerank.engine.errors import HomerankError
from homerank.engine.graph import build_graph
from homerank.engine.lightgcn_format import carve_validation, load_lightgcn, read_pairs
from homerank.gnn.config import EvalConfig, TrainConfig
from homerank.gnn.scorer import Scorer
from homerank.gnn.train import TrainData, train_lightgcn
from homerank.jobs.cli import main


def write_split(folder, train: str, valid: str, test: str):
    """A lightgcn-format folder with the given train.txt / valid.txt / test.txt contents."""
    folder.mkdir()
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text(text)
    return folder


@pytest.fixture()
def tiny_split(tmp_path):
    # 4 users, 6 items; users 0/1 like items 0-2, users 2/3 like items 3-5
    return write_split(tmp_path / "tiny", "0 0 1\n1 1 2\n2 3 4\n3 4 5\n", "0 2\n2 5\n", "1 0\n3 3\n")


def test_reads_pairs_and_splits(tiny_split):
    users, items = read_pairs(tiny_split / "train.txt")
    assert users.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and items.tolist() == [0, 1, 1, 2, 3, 4, 4, 5]
    edges, num_users, num_items, from_file = load_lightgcn(str(tiny_split), 0.1, 0)
    assert (num_users, num_items, from_file) == (4, 6, True)
    assert edges["split"].value_counts().to_dict() == {"train": 8, "valid": 2, "test": 2}


def test_bad_token_names_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2\n1 x\n")
    (tmp_path / "test.txt").write_text("0 3\n")
    with pytest.raises(HomerankError, match=r"train.txt: line 2"):
        load_lightgcn(str(tmp_path), 0.1, 0)


def test_carved_validation_keeps_one_training_item():
    users = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2])
    mask = carve_validation(users, np.arange(users.size), 0.2, seed=0)
    assert mask[users == 0].sum() == 2 and mask[users == 1].sum() == 0 and mask[users == 2].sum() == 1


def run_pipeline(folder: Path, tmp_path: Path, train: str, ks: str, rank_k: int) -> tuple[Path, dict]:
    """`homerank run` on a lightgcn folder with the given train/evaluate/rank settings: (run dir, metrics)."""
    config = tmp_path / "c.yaml"
    config.write_text(f"device: cpu\ningest: {{format: lightgcn}}\ntrain: {train}\n"
                      f"evaluate: {{ks: {ks}}}\nrank: {{k: {rank_k}}}\n")
    run = tmp_path / "run"
    assert main(["run", "--input", str(folder), "--out", str(run), "--config", str(config), "--quiet"]) == 0
    return run, json.loads((run / "metrics.json").read_text())


def test_pipeline_on_tiny_split_with_hand_checked_metrics(tiny_split, tmp_path):
    run, metrics = run_pipeline(tiny_split, tmp_path,
                                "{embedding_dim: 8, num_layers: 1, epochs: 30, batch_size: 8, lr: 0.05, l2: 0.0}",
                                "[1, 2, 20]", 2)
    assert metrics["dataset"] == {"users": 4, "items": 6, "train_edges": 8, "valid_edges": 2, "test_edges": 2}
    # only training items are masked (protocol): user 1 ranks items 0, 3, 4, 5 and user 3 ranks 0, 1, 2, 3;
    # the two communities put each test item (0 and 3) first
    assert metrics["test"]["recall@2"] == 1.0
    assert metrics["test"]["recall@20"] == 1.0 and metrics["test"]["hitrate@20"] == 1.0
    rankings = pd.read_parquet(run / "rankings")
    assert rankings.groupby("user_id").size().eq(2).all()
    known = {(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0), (2, 3), (2, 4), (2, 5), (3, 4), (3, 5), (3, 3)}
    assert not set(zip(rankings["user_id"], rankings["item_id"], strict=True)) & known


def test_validation_items_are_masked_at_test_time(tmp_path):
    # training popularity: item 0 (4 users) > item 1 (3) > items 2, 5 (1). User 4 trained on item 2, holds item 0
    # out for validation and item 1 for test. With train + valid masked, popularity ranks item 1 first for user 4
    # (a hit at K=1); with only train masked it would rank item 0 first (a miss).
    folder = write_split(tmp_path / "split", "0 0 1\n1 0 1\n2 0 1\n3 0 5\n4 2\n", "4 0\n", "4 1\n")
    _, metrics = run_pipeline(folder, tmp_path, "{embedding_dim: 4, num_layers: 1, epochs: 2, batch_size: 8}",
                              "[1, 2]", 1)
    assert metrics["baselines"]["popularity"]["recall@1"] == 1.0
    # the model ranks among items 1, 3, 4, 5 only: it can never spend a slot on the validation item 0
    assert set(metrics["valid"]) >= {"recall@1", "ndcg@2"}


def test_refit_trains_a_fresh_model_on_train_and_validation_for_the_best_epoch(tiny_split, tmp_path):
    run, metrics = run_pipeline(tiny_split, tmp_path,
                                "{embedding_dim: 8, num_layers: 1, epochs: 12, batch_size: 8, lr: 0.05, l2: 0.0, "
                                "lr_schedule: cosine, retrain_with_valid: true}", "[1, 2, 20]", 2)
    summary = json.loads((run / "train" / "summary.json").read_text())
    refit = summary["refit"]
    assert refit["epochs"] == summary["best_epoch"] and refit["pairs"] == 8 + 2
    assert summary["train_seconds"] >= refit["train_seconds"] > 0
    assert (run / "checkpoints" / "refit" / "best.pt").exists()
    # the refit model still separates the two communities: each test item ranks first
    assert metrics["test"]["recall@2"] == 1.0


def test_stop_epoch_follows_the_full_schedule():
    """A run stopped after epoch 3 of a 6-epoch cosine schedule repeats the first 3 epochs of the full run."""
    users, items = np.array([0, 0, 1, 1, 2, 2, 3, 3]), np.array([0, 1, 1, 2, 3, 4, 4, 5])
    backend = resolve_backend("cpu")
    graph, _ = build_graph(users, items, np.ones(8), 4, 6, "binary", backend)
    data = TrainData(4, 6, torch.from_numpy(users), torch.from_numpy(items), graph.adjacency())
    config = TrainConfig(embedding_dim=4, num_layers=1, epochs=6, batch_size=3, lr=0.05, lr_schedule="cosine")
    full = train_lightgcn(data, config, EvalConfig(), 0, torch.device("cpu"), show_progress=False)
    stopped = train_lightgcn(data, config, EvalConfig(), 0, torch.device("cpu"), show_progress=False, stop_epoch=3)
    assert stopped.epochs == 3 and full.epochs == 6
    assert [r["loss"] for r in stopped.history] == [r["loss"] for r in full.history[:3]]
    assert not torch.equal(stopped.model.layer0, full.model.layer0)


def test_filter_share_and_popularity_prior_are_chosen_on_validation(tiny_split, tmp_path):
    run, metrics = run_pipeline(tiny_split, tmp_path,
                                "{embedding_dim: 8, num_layers: 1, epochs: 10, batch_size: 8, lr: 0.05, l2: 0.0, "
                                "linear_filter: {enabled: true, singular_vectors: 2, shares: [0.0, 0.5, 1.0], "
                                "popularity_weights: [0.0, 0.5], choice_users: null}}", "[1, 2, 20]", 2)
    chosen = metrics["linear_filter"]
    # every share with every prior weight was scored; plain shares keep their old keys
    assert set(chosen["valid"]) == {"0.0", "0.5", "1.0", "0.0, popularity 0.5", "0.5, popularity 0.5",
                                    "1.0, popularity 0.5"}
    key = str(chosen["weight"]) if chosen["popularity_weight"] == 0 else \
        f"{chosen['weight']}, popularity {chosen['popularity_weight']}"
    assert chosen["valid"][key] == max(chosen["valid"].values())
    scorer = Scorer.load(run / "train" / "scorer.pt")  # the saved scorer carries the choice made on validation
    assert (scorer.filter_share, scorer.popularity_weight) == (chosen["weight"], chosen["popularity_weight"])
    assert metrics["model"] == scorer.kind and (scorer.linear_filter is None) == (scorer.kind == "lightgcn")
    # the two communities still put each test item first
    assert metrics["test"]["recall@2"] == 1.0
