"""Item content in the model (train.content, gnn/content.py) and the cold-item bench."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from homerank.engine.backend import resolve_backend
from homerank.engine.errors import HomerankError
from homerank.engine.graph import build_graph
from homerank.gnn.config import ContentConfig, EvalConfig, TrainConfig
from homerank.gnn.content import ContentProjection, item_features, price_bands, split_by_graph
from homerank.gnn.model import LightGCNRecommender
from homerank.gnn.train import TrainData, new_model, train_lightgcn
from homerank.jobs.artifacts import content_inputs
from homerank.jobs.config import parse_config
from homerank.jobs.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = pd.DataFrame({
    "item_id": [10, 11, 12, 13],
    "title": ["Eco sport Shoes-1", "Bold sport Shoes-2", "Soft kids Books-3", "Pro kids Books-4"],
    "category": ["Shoes", "Shoes", "Books", None],
    "price": [10.0, 40.0, 20.0, np.nan],
})


# --- configuration ---------------------------------------------------------------------------------------------

def test_content_is_off_by_default_and_features_are_canonical():
    assert TrainConfig().content.features == [] and not TrainConfig().content.enabled
    config = parse_config({"train": {"content": {"features": ["price", "Text"]}}})
    assert config.train.content.features == ["text", "price"] and config.train.content.enabled
    assert ContentConfig(features="category").features == ["category"]  # --set train.content.features=category


@pytest.mark.parametrize(("content", "message"), [
    ({"features": ["txt"]}, "train.content.features: unknown feature block 'txt'"),
    ({"features": ["text", "text"]}, "train.content.features: a feature block is named twice"),
    ({"features": ["text"], "text_dim": 100}, "text_dim must be one of \\[64, 128, 256\\]"),
    ({"id_dropout": 1.0}, "train.content.id_dropout"),
    ({"price_bands": 0}, "train.content.price_bands"),
    ({"colour": True}, "train.content.colour: unknown key"),
])
def test_bad_content_settings_name_the_option(content, message):
    with pytest.raises(HomerankError, match=message):
        parse_config({"train": {"content": content}})


def test_hashed_tfidf_takes_any_dim():
    assert ContentConfig(features=["text"], text_encoder="hashed_tfidf", text_dim=100).text_dim == 100


def test_features_and_config_must_agree():
    data = TrainData(num_users=2, num_items=3, train_users=torch.tensor([0, 1]), train_items=torch.tensor([0, 2]),
                     adjacency=torch.zeros(5, 5).to_sparse_csr())
    with pytest.raises(HomerankError, match="train.content.features is set but the training data has no item"):
        new_model(data, TrainConfig(content={"features": ["category"]}))
    data.item_features = torch.ones(3, 2)
    with pytest.raises(HomerankError, match="item features but train.content.features is empty"):
        new_model(data, TrainConfig())


def test_a_run_without_catalogue_is_a_user_error(tmp_path):
    with pytest.raises(HomerankError, match="items.parquet: not found; train.content.features needs the item "
                                            "catalogue: set ingest.catalogue"):
        content_inputs(RunDir(tmp_path), ContentConfig(features=["category"]))


# --- features ---------------------------------------------------------------------------------------------------

def test_price_bands_by_hand():
    bands = price_bands(pd.Series([10.0, 40.0, 20.0, np.nan, 30.0]), 2)
    assert bands.tolist() == [0, 1, 0, -1, 1]  # ranks 0, 3, 1, -, 2 of 4 priced items: floor(2 * r / 4)


def test_category_and_price_blocks_by_hand():
    features = item_features(CATALOGUE, ContentConfig(features=["category", "price"], price_bands=2))
    assert features.categories == ["Books", "Shoes"]
    assert features.blocks == {"category": (0, 2), "price": (2, 5)}
    x = features.matrix
    np.testing.assert_array_equal(x[:, :2], [[0, 1], [0, 1], [1, 0], [0, 0]])  # no category: zero block
    # 10, 40, 20 are ranks 0, 2, 1 of 3 priced items: bands floor(2 r / 3) = 0, 1, 0; no price: zeros
    np.testing.assert_array_equal(x[:, 2:4], [[1, 0], [0, 1], [1, 0], [0, 0]])
    log_price = np.log1p([10.0, 40.0, 20.0])
    expected = (log_price - log_price.mean()) / log_price.std()
    np.testing.assert_allclose(x[:3, 4], expected, rtol=1e-6)
    assert x[3, 4] == 0


def test_text_block_is_unit_rows_and_shares_words():
    features = item_features(CATALOGUE, ContentConfig(features=["text"], text_encoder="hashed_tfidf", text_dim=32))
    x = features.matrix
    assert x.shape == (4, 32) and features.blocks == {"text": (0, 32)}
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    # two "sport Shoes" titles are closer to each other than to a "kids Books" one
    assert x[0] @ x[1] > x[0] @ x[2]


def test_a_missing_column_is_named():
    with pytest.raises(HomerankError, match="names 'price' but the catalogue has no 'price' column"):
        item_features(CATALOGUE.drop(columns="price"), ContentConfig(features=["price"]))


def test_split_by_graph_places_rows_at_item_indices():
    features = item_features(CATALOGUE, ContentConfig(features=["category"]))
    inputs = split_by_graph(features, CATALOGUE["item_id"], pd.Series([12, 10, 99]), np.array([0, 1, 2]))
    np.testing.assert_array_equal(inputs.graph_features.numpy(), [features.matrix[2], features.matrix[0], [0, 0]])
    assert inputs.cold_ids.tolist() == [11, 13] and inputs.missing_from_catalogue == 1
    np.testing.assert_array_equal(inputs.cold_features.numpy(), features.matrix[[1, 3]])


# --- the model --------------------------------------------------------------------------------------------------

def _tiny_graph() -> torch.Tensor:
    users, items = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 0, 2])
    graph, _ = build_graph(users, items, np.ones(5), 3, 4, "binary", resolve_backend("cpu"))  # item 3: no edges
    return graph.adjacency()


def test_content_projection_gives_items_without_pairs_a_content_embedding():
    torch.manual_seed(0)
    features = torch.eye(4)[:, :3].contiguous()  # item 3 has no features at all
    features[3] = torch.tensor([1.0, 1.0, 0.0])
    trained = torch.tensor([True, True, True, False])
    model = LightGCNRecommender(3, 4, 5, 2, item_features=features, trained_items=trained, content_blocks=1)
    w = model.content.linear.weight.T  # (F, d)
    layer0 = model.layer0
    # an item without training pairs: layer 0 is x_i W exactly (its ID row never enters)
    torch.testing.assert_close(layer0[3 + 3], features[3] @ w)
    torch.testing.assert_close(layer0[3 + 0], model.lightgcn.embedding.weight[3] + features[0] @ w)
    # it is isolated in the graph: its final embedding is alpha_0 x W = x W / (L + 1), as for a cold item
    _, items = model.embeddings(_tiny_graph())
    torch.testing.assert_close(items[3], features[3] @ w / 3)
    cold = model.cold_item_embeddings(features[3:])
    torch.testing.assert_close(cold[0], items[3])
    assert cold.norm() > 0.01  # non-trivial
    # two cold items with different features get different vectors, and the gradient reaches W
    assert not torch.allclose(model.cold_item_embeddings(features[:1]), cold)
    model(_tiny_graph())[1][3].sum().backward()
    assert model.content.linear.weight.grad.abs().sum() > 0
    # the buffers are rebuilt from the data, not saved
    assert set(model.state_dict()) == {"lightgcn.embedding.weight", "lightgcn.alpha", "content.linear.weight"}


def test_projection_starts_at_the_id_scale():
    torch.manual_seed(0)
    projection = ContentProjection(300, 64, num_blocks=3)
    x = torch.nn.functional.normalize(torch.rand(1000, 300), dim=1) * 3**0.5  # three unit blocks
    with torch.no_grad():
        assert 0.05 < float(projection(x).std()) < 0.2


def test_training_with_content_and_id_dropout_is_deterministic():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 300), rng.integers(0, 20, 300)
    pairs = np.unique(np.stack([users, items]), axis=1)
    graph, _ = build_graph(pairs[0], pairs[1], np.ones(pairs.shape[1]), 30, 20, "binary", resolve_backend("cpu"))
    features = torch.from_numpy(rng.random((20, 6)).astype(np.float32))
    data = TrainData(30, 20, torch.from_numpy(pairs[0]), torch.from_numpy(pairs[1]), graph.adjacency(),
                     item_features=features)
    config = TrainConfig(epochs=3, steps_per_epoch=2, content={"features": ["category"], "id_dropout": 0.5})
    runs = [train_lightgcn(data, config, EvalConfig(), 0, torch.device("cpu"), show_progress=False)
            for _ in range(2)]
    torch.testing.assert_close(runs[0].model.state_dict()["content.linear.weight"],
                               runs[1].model.state_dict()["content.linear.weight"])
    assert runs[0].history[0]["loss"] == runs[1].history[0]["loss"]


def test_two_gloo_ranks_with_content_follow_the_single_process_trajectory():
    """train.world_size works with content: W's gradient is summed over the ranks like the ID table's."""
    rng = np.random.default_rng(0)
    num_users, num_items = 200, 80
    users = rng.integers(0, num_users, 2500)
    items = (users * 7 + rng.integers(0, 15, users.size)) % num_items
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    graph, _ = build_graph(pairs[:, 0], pairs[:, 1], np.ones(len(pairs)), num_users, num_items, "binary",
                           resolve_backend("cpu"))
    features = torch.from_numpy(np.eye(8, dtype=np.float32)[np.arange(num_items) % 8])
    data = TrainData(num_users, num_items, torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1]),
                     graph.adjacency(), item_features=features)
    results = {}
    for world_size in (1, 2):
        config = TrainConfig(epochs=2, batch_size=512, world_size=world_size, threads=1,
                             content={"features": ["category"], "id_dropout": 0.3})
        results[world_size] = train_lightgcn(data, config, EvalConfig(), 0, torch.device("cpu"),
                                             show_progress=False)
    one, two = results[1], results[2]
    assert [h["loss"] for h in two.history] == pytest.approx([h["loss"] for h in one.history], abs=1e-5)
    torch.testing.assert_close(two.model.state_dict()["content.linear.weight"],
                               one.model.state_dict()["content.linear.weight"], atol=1e-5, rtol=1e-5)
    assert two.model.has_content


# --- end to end: the bench on a tiny generated log --------------------------------------------------------------

def test_cold_items_score_better_than_random(tmp_path):
    if str(ROOT) not in sys.path:  # `pytest` run as a script does not put the repository root on the path
        sys.path.insert(0, str(ROOT))
    from bench.cold_start_bench import run_cold_start_bench

    path = tmp_path / "summary.json"
    summary = run_cold_start_bench(path, events=40_000, users=800, items=400, holdout=0.15, epochs=6,
                                   features=("text", "category", "price"), text_encoder="hashed_tfidf",
                                   text_dim=32, seed=3, data=tmp_path / "data", keep_run=False)
    written = json.loads(path.read_text())
    for key in ("cold_items", "ours_recall@20", "category_popularity_recall@20", "random_recall@20",
                "mean_vector_recall@20"):
        assert written[key] == summary[key]
    assert written["cold_items"] == round(0.15 * written["setup"]["items_with_events"])
    cold = written["cold_items"]
    assert path.with_suffix(".md").exists()
    # random ranks 20 of the ~60 cold items: Recall@20 about 20 / cold; the content model must do clearly better
    assert abs(written["random_recall@20"] - 20 / cold) < 0.08
    assert written["ours_recall@20"] > written["random_recall@20"] + 0.15
