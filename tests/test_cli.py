"""End-to-end runs of the command line on tiny data, and the user-mistake contract (exit 2, one line)."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from homerank.jobs.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "homerank.jobs.cli", *args], capture_output=True, text=True,
                          timeout=300)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_input_file(tmp_path):
    assert_user_error(run_cli("run", "--input", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "r")),
                      "missing.parquet", "not found")


def test_missing_column(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,2026-01-01\n")
    assert_user_error(run_cli("etl", "--input", str(log), "--out", str(tmp_path / "r"), "--device", "cpu"),
                      "log.csv", "event_type")


@pytest.mark.parametrize("text,fragments", [
    ("train:\n  lr: fast\n", ["train.lr"]),
    ("trian:\n  lr: 0.1\n", ["trian", "unknown key"]),
    ("train: [1, 2\n", ["not valid YAML"]),
    ("split:\n  test: 1.5\n", ["split"]),
])
def test_bad_config(tmp_path, text, fragments):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = run_cli("run", "--input", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(config))
    assert_user_error(result, "bad.yaml", *fragments)


def test_stage_without_previous_stage(tmp_path):
    assert_user_error(run_cli("train", "--out", str(tmp_path / "fresh"), "--device", "cpu"), "graph", "not found")


def read_rankings(run):
    return pd.read_parquet(run / "rankings")


@pytest.mark.slow
def test_end_to_end_run_on_tiny_log(tiny_log, tiny_config, tmp_path):
    run = tmp_path / "run"
    code = main(["run", "--input", str(tiny_log / "events"), "--out", str(run), "--config", str(tiny_config),
                 "--quiet"])
    assert code == 0
    for artifact in ("config.yaml", "metrics.json", "report.md", "user_index.parquet", "item_index.parquet",
                     "quarantine", "checkpoints/best.pt", "checkpoints/epoch_0002.pt", "logs/homerank.log",
                     "graph/graph.pt", "etl/edges.parquet"):
        assert (run / artifact).exists(), artifact
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"test", "baselines", "device", "train_seconds", "epochs", "dataset", "rows"}
    for key in ("recall@20", "ndcg@20", "precision@10", "hitrate@50"):
        assert 0.0 <= metrics["test"][key] <= 1.0 and key in metrics["baselines"]["popularity"]
    rows = metrics["rows"]
    assert rows["in"] == rows["kept"] + rows["quarantined"] + rows["duplicates"]
    assert rows["quarantined"] > 0 and rows["duplicates"] > 0  # the generator injects both
    assert metrics["device"] == "cpu" and metrics["epochs"] >= 1

    rankings = read_rankings(run)
    assert list(rankings.columns) == ["user_id", "rank", "item_id", "score"]
    interactions = pd.read_parquet(run / "etl" / "interactions.parquet")
    per_user = rankings.groupby("user_id")["rank"].agg(["count", "min", "max"])
    assert (per_user["count"] == 10).all() and (per_user["min"] == 1).all() and (per_user["max"] == 10).all()
    assert set(per_user.index) == set(interactions["user_id"])  # every user with history gets a list
    bought = interactions[interactions["n_purchase"] > 0][["user_id", "item_id"]]
    clash = rankings.merge(bought, on=["user_id", "item_id"])
    assert clash.empty, f"{len(clash)} purchased items ranked"
    assert not rankings.duplicated(["user_id", "item_id"]).any()
    # scores are non-increasing along each user's list
    assert (rankings.sort_values(["user_id", "rank"]).groupby("user_id")["score"].diff().dropna() <= 1e-6).all()
    report = (run / "report.md").read_text()
    assert "Conservation check" in report and "holds" in report and "popularity" in report

    # each stage can be rerun alone from the run directory, and the same seed gives the same result
    assert main(["train", "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", "--out", str(run), "--quiet"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["test"] == metrics["test"]
    assert main(["rank", "--out", str(run), "--quiet"]) == 0
    pd.testing.assert_frame_equal(read_rankings(run), rankings)


def test_generate_is_deterministic(tmp_path):
    from homerank.engine.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(users=50, items=40, events=2000, users_per_partition=20, seed=11)
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    a = pd.read_parquet(tmp_path / "a" / "events")
    b = pd.read_parquet(tmp_path / "b" / "events")
    pd.testing.assert_frame_equal(a, b)
    assert set(a["event_type"].dropna()) >= {"view", "click"}


def test_example_config_is_the_default():
    from homerank.jobs.config import JobConfig, load_config

    assert load_config("configs/example.yaml") == JobConfig()


@pytest.mark.parametrize("name", ["lightgcn_recipe", "lightgcn_minute"])
def test_bench_presets_load_and_differ_only_where_documented(name):
    """The committed presets validate, and share the recipe's model (only budget-related settings differ)."""
    from homerank.jobs.config import load_config

    recipe = load_config("bench/configs/lightgcn_recipe.yaml")
    preset = load_config(f"bench/configs/{name}.yaml")
    assert preset.ingest.format == "lightgcn" and preset.train.linear_filter.enabled
    for field in ("embedding_dim", "num_layers", "loss", "temperature", "negatives", "lr", "lr_schedule"):
        assert getattr(preset.train, field) == getattr(recipe.train, field), field
    for field in ("singular_vectors", "alpha", "sharpening", "sharpening_steps"):
        assert getattr(preset.train.linear_filter, field) == getattr(recipe.train.linear_filter, field), field


def test_quarantine_gate_stops_before_training(tmp_path):
    log = tmp_path / "log.csv"
    rows = ["user_id,item_id,event_type,timestamp"]
    rows += [f"u{i % 3},i{i % 4},view,2026-01-0{1 + i % 5}" for i in range(30)]
    rows += [f"u{i},i1,hover,2026-01-01" for i in range(5)]  # 5 of 35 rows quarantined: 14% > 5%
    log.write_text("\n".join(rows) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text("interactions: {min_user_interactions: 1, min_item_interactions: 1}\n")
    run = tmp_path / "run"
    result = run_cli("run", "--input", str(log), "--out", str(run), "--device", "cpu", "--quiet", "--config",
                     str(config))
    assert result.returncode == 3, result.stderr
    assert "max_quarantined_share" in result.stderr and "Traceback" not in result.stderr
    assert not (run / "graph").exists() and not (run / "rankings").exists()
    gates = json.loads((run / "etl" / "stats.json").read_text())["gates"]
    assert [g["passed"] for g in gates if g["gate"] == "max_quarantined_share"] == [False]
    assert "FAIL" in (run / "report.md").read_text()
