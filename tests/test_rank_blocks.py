"""Issue 18, items 3 and 4: the rank stage goes by blocks of users (one Parquet part per block, published with the
manifest last) and writes the embeddings and the faiss item index for serving, which `Recommender` uses for
retrieval on large catalogues."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import homerank
from homerank.engine.backend import resolve_backend
from homerank.engine.errors import HomerankError
from homerank.gnn.scorer import Scorer
from homerank.jobs.config import apply_dotted
from homerank.jobs.recommend import ItemSearch, Recommender, lift_items
from homerank.jobs.rundir import MANIFEST, SUCCESS, RunDir
from homerank.jobs.stage_rank import run_rank
from tests.test_api import OVERRIDES, tiny_events

FAST = {**OVERRIDES, "train.epochs": 2, "homepage.enabled": False, "profiles.enabled": False}  # rank only


def _run(tmp_path_factory, name: str, events: pd.DataFrame) -> homerank.Run:
    out = tmp_path_factory.mktemp(name) / "run"
    return homerank.run(events, out=out, device="cpu", progress=False, **FAST)


@pytest.fixture(scope="module")
def int_run(tmp_path_factory) -> homerank.Run:
    return _run(tmp_path_factory, "int_ids", tiny_events())


@pytest.fixture(scope="module")
def str_run(tmp_path_factory) -> homerank.Run:
    events = tiny_events(seed=3)
    events["user_id"] = "u-" + events["user_id"].astype(str)
    events["item_id"] = "item/" + events["item_id"].astype(str)
    return _run(tmp_path_factory, "str_ids", events)


def _copy(run: homerank.Run, tmp_path: Path) -> RunDir:
    return RunDir(Path(shutil.copytree(run.path, tmp_path / "run")))


def _rank(run: RunDir, **rank: object) -> dict:
    config = apply_dotted(homerank.Run(run.root).config, {f"rank.{key}": value for key, value in rank.items()})
    return run_rank(run, config, resolve_backend("cpu"))


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_many_blocks_give_the_rows_of_one_block(int_run, tmp_path):
    run = _copy(int_run, tmp_path)
    one = _rank(run, block_users=1_000_000)
    single = pd.read_parquet(run.rankings)
    many = _rank(run, block_users=7)
    blocked = pd.read_parquet(run.rankings)
    pd.testing.assert_frame_equal(blocked, single)
    assert list(blocked.columns) == ["user_id", "rank", "item_id", "score"]
    assert blocked["user_id"].dtype == np.int64 and blocked["score"].dtype == np.float32
    users = len(blocked["user_id"].unique())
    assert one["blocks"] == 1 and many["blocks"] == -(-users // 7) > 1
    manifest = json.loads((run.rankings / MANIFEST).read_text())
    assert sorted(manifest["files"]) == [f"part-{n:05d}.parquet" for n in range(many["blocks"])]
    assert manifest["columns"] == ["user_id", "rank", "item_id", "score"] and manifest["rows"] == len(single)
    part_users = [set(pd.read_parquet(run.rankings / name)["user_id"]) for name in sorted(manifest["files"])]
    assert all(len(users_) <= 7 for users_ in part_users) and sum(map(len, part_users)) == users
    for key in ("users", "rows", "users_with_fewer_than_k", "k", "model_users", "excluded_pairs"):
        assert one[key] == many[key]
    assert not run.rank_staging.exists() and not list(run.root.glob(".*tmp*"))


def test_a_failing_block_leaves_the_published_outputs_intact(int_run, tmp_path, monkeypatch):
    run = _copy(int_run, tmp_path)
    before = {name: _files(getattr(run, name)) for name in ("rankings", "embeddings")}
    stats_before = run.rank_stats.read_bytes()
    manifests = sorted(run.root.rglob(MANIFEST))
    original = Recommender.recommend
    calls = []

    def failing(self, user_ids, k, exclude_seen=True):
        calls.append(len(user_ids))
        staged = RunDir(run.rank_staging).rankings_staging
        if len(calls) == 2:
            # block 1 is on disk as its own part, nothing says the dataset is complete
            assert sorted(p.name for p in staged.iterdir() if not p.name.startswith(".")) == ["part-00000.parquet"]
            assert not (staged / MANIFEST).exists() and not (staged / SUCCESS).exists()
            raise RuntimeError("block 2 died")
        return original(self, user_ids, k, exclude_seen)

    monkeypatch.setattr(Recommender, "recommend", failing)
    with pytest.raises(RuntimeError, match="block 2 died"):
        _rank(run, block_users=10)
    assert calls[0] == 10 and len(calls) == 2
    assert {name: _files(getattr(run, name)) for name in ("rankings", "embeddings")} == before
    assert run.rank_stats.read_bytes() == stats_before
    assert not run.rank_staging.exists() and not run.rankings_staging.exists()
    assert not [p for p in run.root.rglob("*") if ".tmp" in p.name]
    assert sorted(run.root.rglob(MANIFEST)) == manifests  # no new manifest anywhere


@pytest.mark.parametrize("which", ["int_run", "str_run"])
def test_embeddings_are_parquet_keyed_by_the_original_ids(which, request):
    run: homerank.Run = request.getfixturevalue(which)
    paths = RunDir(run.path)
    scorer = Scorer.load(paths.scorer)
    user_index, item_index = pd.read_parquet(paths.user_index), pd.read_parquet(paths.item_index)
    users, items = run.embeddings()
    for path, id_column, index_column, table, vectors, frame in (
            (paths.user_embeddings, "user_id", "user_index", user_index, scorer.user_embeddings, users),
            (paths.item_embeddings, "item_id", "item_index", item_index, scorer.item_embeddings, items)):
        parquet = pq.read_table(path)
        assert parquet.column_names == [id_column, "embedding"]
        kind = parquet.schema.field("embedding").type
        assert pa.types.is_fixed_size_list(kind) and kind.list_size == 8 and kind.value_type == pa.float32()
        ids = pd.read_parquet(path, columns=[id_column])[id_column]  # the pandas metadata keeps the dtype
        ordered = table.sort_values(index_column)[id_column]
        assert ids.dtype == ordered.dtype and ids.tolist() == ordered.tolist()  # row r = model index r
        flat = parquet.column("embedding").combine_chunks().flatten().to_numpy()
        np.testing.assert_array_equal(flat.reshape(len(ids), 8), vectors.numpy())
        assert frame.index.name == id_column and frame.index.tolist() == ids.tolist()
        assert frame.index.dtype == ordered.dtype
        np.testing.assert_array_equal(frame.to_numpy(), vectors.numpy())
        note = json.loads(parquet.schema.metadata[b"homerank.embeddings"])
        assert note["scorer"] == scorer.kind == "lightgcn" and note["dim"] == 8
    if which == "str_run":
        assert users.index.str.startswith("u-").all() and items.index.str.startswith("item/").all()
    else:
        assert users.index.dtype == np.int64 and items.index.dtype == np.int64


def test_the_saved_index_rows_are_the_items_parquet_rows(int_run):
    from homerank.gnn.item_index import ItemIndex

    paths = RunDir(int_run.path)
    index = ItemIndex.load(paths.item_faiss)
    users, items = int_run.embeddings()
    assert index.exact and index.size == len(items) and index.index.d == items.shape[1] + 1
    # serving: query with [u, 0]; the best rows are the items with the largest dot product
    user = users.to_numpy()[:3]
    _, rows = index.search(np.hstack([user, np.zeros((3, 1), np.float32)]), 5)
    expected = np.argsort(-(user @ items.to_numpy().T), axis=1, kind="stable")[:, :5]
    assert (rows == expected).mean() > 0.9  # exact up to float ties
    assert set(items.index[rows[0]]) <= set(items.index)


def test_run_embeddings_without_the_rank_stage_says_what_to_run(int_run, tmp_path):
    run = _copy(int_run, tmp_path)
    shutil.rmtree(run.embeddings)
    with pytest.raises(HomerankError, match="rank"):
        homerank.Run.open(run.root).embeddings()


def test_index_retrieval_gives_the_exact_top_k(int_run, tmp_path):
    run = _copy(int_run, tmp_path)
    exact = _rank(run)
    exact_rankings = pd.read_parquet(run.rankings)
    assert exact["retrieval"] == "exact scoring"
    through_index = _rank(run, index_min_items=0, index_exact_items=1_000_000, index_overfetch=2, block_users=13)
    assert through_index["retrieval"].startswith("faiss exact index")
    retrieved = pd.read_parquet(run.rankings)
    pd.testing.assert_frame_equal(retrieved[["user_id", "rank", "item_id"]], exact_rankings[["user_id", "rank",
                                                                                            "item_id"]])
    np.testing.assert_allclose(retrieved["score"], exact_rankings["score"], rtol=1e-5, atol=1e-6)
    # Run.recommend goes through the saved index too when the catalogue is large enough
    opened = homerank.Run.open(run.root)
    config = apply_dotted(opened.config, {"rank.index_min_items": 0, "rank.index_overfetch": 1})
    opened.__dict__["config"] = config
    assert opened._recommender.item_search is not None
    some = exact_rankings["user_id"].drop_duplicates().head(12).tolist()
    answer = opened.recommend(some, k=int(exact["k"]))
    assert (answer["source"] == "model").all()
    expected = exact_rankings[exact_rankings["user_id"].isin(some)].reset_index(drop=True)
    pd.testing.assert_frame_equal(answer[["user_id", "rank", "item_id"]], expected[["user_id", "rank", "item_id"]])


def test_retrieval_leaves_out_excluded_items_and_fills_up_to_k():
    """Hand-made: 2 users, 6 items on a line; user 0 excluded the items the index ranks first for them."""
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 2.0], [0.5, 0.5]])
    recommender = Recommender(
        Scorer(users, items), pd.DataFrame({"user_id": [10, 11], "user_index": [0, 1]}),
        pd.DataFrame({"item_id": [100, 101, 102, 103, 104, 105], "item_index": range(6)}), np.array([10, 11]),
        pd.DataFrame({"user_id": [10, 10], "item_id": [100, 101]}), torch.ones(6), batch_size=1,
        item_search=ItemSearch.build(items.numpy(), exact_items=100), overfetch=1)
    answer = recommender.recommend([10, 11], k=2)
    assert answer["item_id"].tolist() == [102, 105, 103, 104]
    np.testing.assert_allclose(answer["score"], [1.0, 0.5, 3.0, 2.0])
    exact = Recommender(recommender.scorer, recommender.user_index, recommender.item_index,
                        recommender.history_users, recommender.excluded, recommender.popularity)
    pd.testing.assert_frame_equal(answer, exact.recommend([10, 11], k=2))


def test_users_an_index_answers_short_are_scored_over_every_item():
    """An approximate index may come back with fewer rows than asked (-1): those users get the exact ranking."""
    rng = np.random.default_rng(1)
    users, items = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32)), torch.from_numpy(
        rng.normal(size=(12, 4)).astype(np.float32))
    exact = Recommender(Scorer(users, items), pd.DataFrame({"user_id": range(5), "user_index": range(5)}),
                        pd.DataFrame({"item_id": range(100, 112), "item_index": range(12)}), np.arange(5),
                        pd.DataFrame({"user_id": [0, 0, 3], "item_id": [100, 105, 111]}), torch.ones(12))
    search = ItemSearch.build(items.numpy(), exact_items=100)

    class Short:  # every other user gets only -1 rows
        def candidates(self, vectors: np.ndarray, count: int) -> np.ndarray:
            rows = search.candidates(vectors, count)
            rows[::2] = -1
            return rows

    retrieving = Recommender(exact.scorer, exact.user_index, exact.item_index, exact.history_users, exact.excluded,
                             exact.popularity, batch_size=2, item_search=Short(), overfetch=1)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(retrieving.recommend(range(5), k=4), exact.recommend(range(5), k=4))


def test_the_lift_keeps_the_inner_product_order():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 6)).astype(np.float32) * rng.uniform(0.1, 3, size=(300, 1)).astype(np.float32)
    lifted = lift_items(items)
    assert np.allclose(np.linalg.norm(lifted, axis=1), np.linalg.norm(items, axis=1).max(), rtol=1e-5)
    queries = rng.normal(size=(20, 6)).astype(np.float32)
    rows = ItemSearch.build(items, exact_items=1000).candidates(queries, 10)
    expected = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    assert (rows == expected).all()


def _rank_on_cluster(run: RunDir, **rank: object) -> dict:
    overrides = {**{f"rank.{key}": value for key, value in rank.items()}, "rank.on_cluster": True,
                 "cluster.n_workers": 2, "cluster.threads_per_worker": 1, "cluster.processes": False}
    return run_rank(run, apply_dotted(homerank.Run(run.root).config, overrides), resolve_backend("cpu"))


def test_blocks_as_dask_tasks_write_the_in_process_dataset(int_run, tmp_path):
    """rank.on_cluster: the workers load the run themselves and write their blocks' parts; the client only cuts
    the blocks and publishes. Same rows, parts and statistics as ranking every block in this process."""
    run = _copy(int_run, tmp_path)
    local = _rank(run, block_users=7)
    in_process = {name: _files(run.rankings)[name] for name in _files(run.rankings) if name.startswith("part-")}
    embeddings = _files(run.embeddings)
    clustered = _rank_on_cluster(run, block_users=7)
    assert clustered["on_cluster"] is True and clustered["blocks"] == local["blocks"] > 1
    assert {name: data for name, data in _files(run.rankings).items() if name.startswith("part-")} == in_process
    assert _files(run.embeddings) == embeddings
    for key in ("users", "rows", "users_with_fewer_than_k", "k", "model_users", "popularity_users",
                "excluded_pairs", "retrieval"):
        assert clustered[key] == local[key], key
    assert not run.rank_staging.exists()


def test_a_failing_dask_block_publishes_nothing(int_run, tmp_path, monkeypatch):
    from homerank.engine.errors import GateError
    from homerank.jobs import stage_rank

    run = _copy(int_run, tmp_path)
    before = {name: _files(getattr(run, name)) for name in ("rankings", "embeddings")}
    real = stage_rank.rank_block

    def second_block_fails(recommender, block, k, parts, run_dir, number, blocks):
        if number == 1:
            raise GateError("rank: block 2 failed on purpose")
        return real(recommender, block, k, parts, run_dir, number, blocks)

    monkeypatch.setattr(stage_rank, "rank_block", second_block_fails)  # the workers are threads of this process
    with pytest.raises(GateError, match="on purpose"):
        _rank_on_cluster(run, block_users=7)
    assert {name: _files(getattr(run, name)) for name in ("rankings", "embeddings")} == before
    assert not run.rank_staging.exists()
