"""Issue 16, second round: diverged training publishes nothing (item 2), config values that type-check but make no
sense are refused (item 6), and each remaining traceback became one line with an exit status (item 10)."""

from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from homerank.engine.errors import GateError, HomerankError
from homerank.jobs.cli import main
from homerank.jobs.config import JobConfig, apply_dotted, load_config
from homerank.jobs.rundir import RunDir, atomic_path, write_parquet_dataset
from tests.conftest import TINY_CONFIG


def error_line(capsys) -> str:
    """The one line the CLI printed for an error (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and "Traceback" not in err, err
    assert lines[-1].startswith("homerank: error: "), err
    return lines[-1]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in Path(folder).rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def trained_run(tiny_log, tmp_path_factory) -> Path:
    """etl, graph and train (4 epochs, checkpoints at 2 and 4) on the tiny log; tests change copies of it."""
    root = tmp_path_factory.mktemp("trained")
    config = root / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    run = root / "run"
    assert main(["etl", "--input", str(tiny_log / "events"), "--out", str(run), "--config", str(config),
                 "--quiet"]) == 0
    for stage in ("graph", "train"):
        assert main([stage, "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


# item 2 — training that diverges must not ship


def test_diverged_training_stops_the_run_and_publishes_nothing(tiny_log, tiny_config, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    code = main(["run", "--input", str(tiny_log / "events"), "--out", str(run.root), "--config", str(tiny_config),
                 "--quiet", "--set", "train.lr=1e30"])
    line = error_line(capsys)
    assert code == 3, line
    assert "diverged" in line and "epoch 1" in line and ("nan" in line or "inf" in line) and "train.lr" in line
    assert not run.scorer.exists() and not run.rankings.exists() and not run.homepage.exists()
    assert not leftovers(run.root)


def test_rank_refuses_to_publish_a_partial_ranking(run_copy, capsys):
    from homerank.gnn.scorer import Scorer

    run = RunDir(run_copy)
    scorer = Scorer.load(run.scorer)  # a scorer with NaN rows, as an earlier version could leave behind
    scorer.user_embeddings[:7] = float("nan")
    scorer.save(run.scorer)
    code = main(["rank", "--out", str(run.root), "--quiet"])
    line = error_line(capsys)
    assert code == 3, line
    assert "7 of" in line and "rank.k" in line and str(run.rankings) in line
    assert not run.rankings.exists()


def test_check_finite_names_the_tensor_and_the_value():
    from homerank.engine.errors import TrainingDivergedError
    from homerank.gnn.train import check_finite

    check_finite("at epoch 1", 0.01, embeddings=torch.ones(3, 2))
    with pytest.raises(TrainingDivergedError, match=r"at epoch 2: 1 of 6 values of the item embeddings.*inf"):
        check_finite("at epoch 2", 0.01, item_embeddings=torch.tensor([[1.0, 2.0], [3.0, math.inf], [0.0, 0.0]]))
    assert TrainingDivergedError.exit_code == 3


def test_check_finite_finds_a_value_in_any_piece(monkeypatch):
    """The check runs over pieces of the flattened table: a NaN in the last, partial piece of a view (a slice of a
    larger table, as the user rows of the final embeddings are) is found and counted like one in the first."""
    from homerank.engine.errors import TrainingDivergedError
    from homerank.gnn import train

    monkeypatch.setattr(train, "FINITE_CHUNK", 4)
    table = torch.zeros(5, 2)
    train.check_finite("at epoch 1", 0.01, users=table[:4])
    table[3, 1] = math.nan
    table[4, 0] = math.inf  # outside the view: not counted
    with pytest.raises(TrainingDivergedError, match=r"1 of 8 values of the users are not finite \(e.g. nan\)"):
        train.check_finite("at epoch 1", 0.01, users=table[:4])
    table[0, 0] = -math.inf
    with pytest.raises(TrainingDivergedError, match=r"2 of 8 values"):
        train.check_finite("at epoch 1", 0.01, users=table[:4])


# item 6 — values that type-check but make no sense


@pytest.mark.parametrize("key,value,fragment", [
    ("interactions.event_weights.view", -1.0, "interactions.event_weights"),
    ("interactions.event_weights.click", 0.0, "must be > 0"),
    ("interactions.event_weights.cart", float("nan"), "interactions.event_weights.cart"),
    ("interactions.half_life_days", float("inf"), "interactions.half_life_days"),
    ("split.test", float("nan"), "split.test"),
    ("train.lr", float("inf"), "train.lr"),
    ("train.lr", float("nan"), "train.lr"),
    ("train.l2", float("inf"), "train.l2"),
    ("train.temperature", float("inf"), "train.temperature"),
    ("train.time_budget_s", float("inf"), "train.time_budget_s"),
    ("train.linear_filter.shares", [0.0, 1.5], "train.linear_filter.shares"),
    ("train.linear_filter.shares", [], "train.linear_filter.shares"),
    ("train.linear_filter.popularity_weights", [float("nan")], "train.linear_filter.popularity_weights"),
    ("train.linear_filter.alpha", float("inf"), "train.linear_filter.alpha"),
    ("gates.max_quarantined_share", float("nan"), "gates.max_quarantined_share"),
    ("gates.max_edge_change", float("inf"), "gates.max_edge_change"),
    ("homepage.mmr_lambda", float("nan"), "homepage.mmr_lambda"),
    ("homepage.new_arrival_days", float("inf"), "homepage.new_arrival_days"),
    ("homepage.trending_window_days", float("inf"), "homepage.trending_window_days"),
    ("train.early_stopping_metric", "ndcg@x", "train.early_stopping_metric"),
    ("train.early_stopping_metric", "foo@20", "recall|ndcg|precision|hitrate@K"),
    ("train.early_stopping_metric", "ndcg@0", "train.early_stopping_metric"),
    ("seed", -1, "seed"),
    ("seed", 2**32, "seed"),
    ("homepage.sections", [], "homepage.sections"),  # a page of no rows for every user
    ("ingest.event_types", [], "ingest.event_types"),
])
def test_config_refuses_values_that_make_no_sense(key, value, fragment):
    with pytest.raises(HomerankError, match="^--set: ") as caught:
        apply_dotted(JobConfig(), {key: value}, source="--set")
    assert fragment in caught.value.message and "\n" not in caught.value.message


def test_config_keeps_sensible_edge_values(tmp_path):
    config = apply_dotted(JobConfig(), {"seed": 2**32 - 1, "train.early_stopping_metric": "Recall@5",
                                        "train.linear_filter.shares": [0.0, 1.0], "homepage.mmr_lambda": 1.0})
    assert config.seed == 2**32 - 1 and config.train.early_stopping_metric == "recall@5"
    path = tmp_path / "inf.yaml"
    path.write_text("train:\n  lr: .inf\n")  # YAML's infinity
    with pytest.raises(HomerankError, match=r"inf.yaml: train.lr: .*finite"):
        load_config(path)


def test_negative_weights_with_log1p_are_refused_before_any_work(tiny_log, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["run", "--input", str(tiny_log / "events"), "--out", str(run), "--quiet", "--device", "cpu",
                 "--set", "interactions.event_weights.view=-1", "--set", "graph.edge_weight=log1p"])
    line = error_line(capsys)
    assert code == 2, line
    assert "interactions.event_weights" in line and "log1p" in line
    assert not RunDir(run).edges.exists()


def test_a_graph_without_edges_stops_the_job(run_copy, capsys):
    run = RunDir(run_copy)
    edges = pd.read_parquet(run.edges)
    edges["weight"] = 0.0  # e.g. a half-life so short that every weight decayed to 0
    write_parquet_dataset(run.edges, edges)
    code = main(["graph", "--out", str(run.root), "--quiet", "--set", "graph.edge_weight=weight"])
    line = error_line(capsys)
    assert code == 3, line
    assert "0 edges" in line and "graph.edge_weight weight" in line
    assert not run.graph.exists()  # the earlier graph is not left to be trained on


@pytest.mark.filterwarnings("ignore:invalid value encountered in log1p:RuntimeWarning")
def test_non_finite_adjacency_is_a_gate():
    from homerank.engine.backend import resolve_backend
    from homerank.engine.graph import build_graph, check_edges

    users, items = np.array([0, 0, 1]), np.array([0, 1, 1])
    graph, _ = build_graph(users, items, np.array([-2.0, -3.0, -4.0]), 2, 2, "log1p", resolve_backend("cpu"))
    with pytest.raises(GateError, match="not finite"):
        check_edges(graph, 3, "log1p")
    graph, _ = build_graph(users, items, np.array([1.0, 2.0, 3.0]), 2, 2, "log1p", resolve_backend("cpu"))
    check_edges(graph, 3, "log1p")


# item 10 — one line, not a traceback


def test_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "run"
    target.write_text("not a folder")
    assert main(["graph", "--out", str(target), "--quiet"]) == 2
    line = error_line(capsys)
    assert f"--out {target}" in line and "not a directory" in line


def test_out_that_is_read_only(tmp_path, capsys, monkeypatch):
    target = tmp_path / "run"
    target.mkdir()
    target.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: emulate an ordinary user's view of the permission bits
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == target
                            else real_access(path, mode, **kw))
    try:
        assert main(["graph", "--out", str(target), "--quiet"]) == 2
    finally:
        target.chmod(0o755)
    line = error_line(capsys)
    assert f"--out {target}" in line and "read-only" in line


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_out_of_range(tmp_path, capsys, seed):
    assert main(["graph", "--out", str(tmp_path / "run"), "--seed", seed, "--quiet"]) == 2
    assert "seed" in error_line(capsys)
    assert main(["generate", "--out", str(tmp_path / "log"), "--seed", seed, "--users", "5"]) == 2
    assert "--seed" in error_line(capsys)


def test_bad_early_stopping_metric_on_the_command_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "train.early_stopping_metric=ndcg@x"]) == 2
    assert "train.early_stopping_metric" in error_line(capsys)


def test_resume_after_changing_the_embedding_dim(run_copy, capsys):
    code = main(["train", "--out", str(run_copy), "--resume", "--quiet", "--set", "train.embedding_dim=8"])
    line = error_line(capsys)
    assert code == 2, line
    assert "epoch_0004.pt" in line and "train.embedding_dim 8" in line and "without --resume" in line


def test_corrupt_checkpoint(run_copy, capsys):
    run = RunDir(run_copy)
    (run.checkpoints / "epoch_0004.pt").write_bytes(b"PK\x03\x04 truncated")
    code = main(["train", "--out", str(run.root), "--resume", "--quiet"])
    line = error_line(capsys)
    assert code == 2, line
    assert "epoch_0004.pt" in line and "not a readable homerank checkpoint" in line


def test_corrupt_graph(run_copy, capsys):
    run = RunDir(run_copy)
    run.graph.write_bytes(b"\x00" * 64)
    code = main(["train", "--out", str(run.root), "--quiet"])
    line = error_line(capsys)
    assert code == 2, line
    assert str(run.graph) in line and "run the graph stage again" in line


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_an_artifact(tmp_path, monkeypatch):
    target = tmp_path / "stats.json"
    target.write_text("earlier")
    with pytest.raises(HomerankError, match="stats.json: could not be written .*No space left"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            _disk_full()
    assert target.read_text() == "earlier" and not leftovers(tmp_path)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _disk_full)
    with pytest.raises(HomerankError, match="rankings: could not be written"):
        write_parquet_dataset(tmp_path / "rankings", pd.DataFrame({"a": [1]}))
    assert not (tmp_path / "rankings").exists() and not leftovers(tmp_path)
    with pytest.raises(OSError) as other:  # any other OSError stays what it was
        with atomic_path(target):
            raise OSError(errno.EIO, "I/O error")
    assert not isinstance(other.value, HomerankError) and not leftovers(tmp_path)


def test_full_disk_on_the_command_line(run_copy, capsys, monkeypatch):
    run = RunDir(run_copy)
    monkeypatch.setattr(torch, "save", _disk_full)
    # the first file training writes cannot be written: the best state after the first validation, which lives in
    # the checkpoints folder (off the process's heap)
    assert main(["train", "--out", str(run.root), "--quiet"]) == 2
    line = error_line(capsys)
    assert str(run.checkpoints / "best_state.pt") in line and "No space left" in line
    assert not run.scorer.exists()
    assert main(["graph", "--out", str(run.root), "--quiet"]) == 2
    line = error_line(capsys)
    assert str(run.graph) in line and "No space left" in line
    assert not leftovers(run.root)


def test_full_disk_anywhere_in_a_stage_is_one_line(run_copy, capsys, monkeypatch):
    # e.g. a dask worker that cannot spill to a full disk: the OSError comes back through dask.compute
    import homerank.jobs.pipeline as pipeline

    run = RunDir(run_copy)
    monkeypatch.setattr(pipeline, "run_stage", _disk_full)
    assert main(["graph", "--out", str(run.root), "--quiet"]) == 2
    line = error_line(capsys)
    assert str(run.root) in line and "No space left" in line and "cluster.local_directory" in line

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(pipeline, "run_stage", broken)
    with pytest.raises(OSError, match="I/O error"):  # any other OSError stays what it was
        main(["graph", "--out", str(run.root), "--quiet"])


# item 10 — data problems are exit 3


def test_every_row_bad_is_a_data_problem(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,event_type,timestamp\n" + "".join(
        f"{user},{user + 1},teleport,2026-01-0{user}\n" for user in range(1, 6)))  # no row has a known event type
    code = main(["etl", "--input", str(log), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    line = error_line(capsys)
    assert code == 3, line
    assert "no valid rows" in line


def test_nothing_left_after_the_k_core_is_a_data_problem(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,event_type,timestamp\n1,10,view,2026-01-01\n2,11,view,2026-01-02\n")
    code = main(["etl", "--input", str(log), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    line = error_line(capsys)
    assert code == 3, line
    assert "k-core" in line
