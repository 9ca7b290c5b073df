"""End-to-end runs of the command line on tiny data, and the user-mistake contract (exit 2, one line)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

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


# One user mistake goes through a real `python -m homerank.jobs.cli` process (its exit status and its whole stderr,
# import-time output and the ETL's dask start-up included); the others call main() in this process, where the exit
# status is main's return value and stderr is captured: the same contract without paying the CLI's start-up (torch,
# dask) each time.


def test_missing_input_file(tmp_path, capsys):
    assert main(["run", "--input", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys, "missing.parquet", "not found")


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
def test_bad_config(tmp_path, text, fragments, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["run", "--input", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(config)]) == 2
    assert_one_line_error(capsys, "bad.yaml", *fragments)


def test_stage_without_previous_stage(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "fresh"), "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "graph", "not found")


def test_main_leaves_the_callers_logging_as_it_found_it(tmp_path, capsys):
    """Called from Python, main() removes the handlers it added: the run's log takes no later record."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    assert main(["train", "--out", str(tmp_path / "fresh"), "--device", "cpu"]) == 2
    assert root.handlers == handlers and root.level == level
    log_file = tmp_path / "fresh" / "logs" / "homerank.log"
    written = log_file.read_text()
    logging.getLogger("homerank.somewhere").warning("a record after main() returned")
    assert log_file.read_text() == written


def read_rankings(run):
    return pd.read_parquet(run / "rankings")


@pytest.mark.slow
def test_end_to_end_run_on_tiny_log(homepage_run, tmp_path):
    # homepage_run is `homerank run` on the tiny log (conftest); the stages are rerun below, so on a copy of it
    run = Path(shutil.copytree(homepage_run[0], tmp_path / "run"))
    for artifact in ("config.yaml", "metrics.json", "report.md", "user_index.parquet", "item_index.parquet",
                     "quarantine", "checkpoints/best.pt", "checkpoints/epoch_0002.pt", "logs/homerank.log",
                     "graph/graph.pt", "etl/edges/_SUCCESS.json"):
        assert (run / artifact).exists(), artifact
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"test", "baselines", "device", "train_seconds", "epochs", "dataset", "rows"}
    for key in ("recall@20", "ndcg@20", "precision@10", "hitrate@50"):
        assert 0.0 <= metrics["test"][key] <= 1.0 and key in metrics["baselines"]["popularity"]
    rows = metrics["rows"]
    assert rows["in"] == rows["kept"] + rows["quarantined"] + rows["duplicates"]
    assert rows["quarantined"] > 0 and rows["duplicates"] > 0  # the generator injects both
    assert metrics["device"] == "cpu" and metrics["epochs"] >= 1

    assert metrics["test_users"] == {"scored": metrics["test_users"]["with_test_items"],
                                     "with_test_items": metrics["test_users"]["with_test_items"], "sampled": False}
    assert "test_standard_errors" not in metrics  # every test user ranked: exact metrics

    rankings = read_rankings(run)
    assert list(rankings.columns) == ["user_id", "rank", "item_id", "score"]
    interactions = pd.read_parquet(run / "etl" / "interactions")
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

    # a sample of the test users (evaluate.test_users): estimates within a few standard errors of the exact metrics,
    # the popularity baseline scored on the same users, and the same sample again for the same seed
    assert main(["evaluate", "--out", str(run), "--quiet", "--set", "evaluate.test_users=80"]) == 0
    sampled = json.loads((run / "metrics.json").read_text())
    assert sampled["test_users"] == {"scored": 80, "with_test_items": metrics["test_users"]["with_test_items"],
                                     "sampled": True}
    errors = sampled["test_standard_errors"]
    assert set(errors) == set(metrics["test"]) and 0 < errors["recall@20"] < 0.1
    for key in ("recall@20", "ndcg@20", "hitrate@10"):
        assert abs(sampled["test"][key] - metrics["test"][key]) < 4 * errors[key], key
    assert sampled["baselines"]["popularity"] != metrics["baselines"]["popularity"]
    assert "sample of 80 of the" in (run / "report.md").read_text()
    assert main(["evaluate", "--out", str(run), "--quiet", "--set", "evaluate.test_users=80"]) == 0
    assert json.loads((run / "metrics.json").read_text())["test"] == sampled["test"]


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


@pytest.mark.parametrize("name", ["recipe", "minute"])
def test_presets_load_and_differ_only_where_documented(name):
    """The shipped presets validate, and share the recipe's model (only budget-related settings differ)."""
    from homerank.jobs.config import load_config

    recipe = load_config("preset:recipe")
    preset = load_config(f"preset:{name}")
    assert preset.ingest.format == "lightgcn" and preset.train.linear_filter.enabled
    for field in ("embedding_dim", "num_layers", "loss", "temperature", "negatives", "lr", "lr_schedule"):
        assert getattr(preset.train, field) == getattr(recipe.train, field), field
    for field in ("singular_vectors", "alpha", "sharpening", "sharpening_steps"):
        assert getattr(preset.train.linear_filter, field) == getattr(recipe.train.linear_filter, field), field


def test_quarantine_gate_stops_before_training(tmp_path, capsys):
    log = tmp_path / "log.csv"
    rows = ["user_id,item_id,event_type,timestamp"]
    rows += [f"u{i % 3},i{i % 4},view,2026-01-0{1 + i % 5}" for i in range(30)]
    rows += [f"u{i},i1,hover,2026-01-01" for i in range(5)]  # 5 of 35 rows quarantined: 14% > 5%
    log.write_text("\n".join(rows) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text("interactions: {min_user_interactions: 1, min_item_interactions: 1}\n")
    run = tmp_path / "run"
    code = main(["run", "--input", str(log), "--out", str(run), "--device", "cpu", "--quiet", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "max_quarantined_share" in err and "Traceback" not in err
    assert not (run / "graph").exists() and not (run / "rankings").exists()
    verdict = json.loads((run / "etl" / "gates.json").read_text())  # the refused ETL is not published
    assert not verdict["accepted"] and not (run / "etl" / "stats.json").exists()
    assert [g["passed"] for g in verdict["gates"] if g["gate"] == "max_quarantined_share"] == [False]
    assert (run / "etl.rejected" / "quarantine" / "_SUCCESS.json").exists()
    assert "FAIL" in (run / "report.md").read_text()


# --- command-line conventions: --set, --version, presets -------------------------------------------------------

STAGES = ["etl", "graph", "train", "evaluate", "rank", "homepage", "run", "demo"]


def stage_args(command, run):
    """The smallest valid command line of ``command`` into run directory ``run``."""
    args = [command, "--out", str(run), "--quiet"]
    if command in ("etl", "run"):
        args += ["--input", str(run.parent / "no-log-needed")]  # the config is resolved before the input is read
    return args


def assert_one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_set_overrides_the_config_and_a_stage_writes_it_to_the_run(tiny_log, tiny_config, tmp_path):
    from homerank.jobs.config import load_config

    run = tmp_path / "run"
    assert main(["etl", "--input", str(tiny_log / "events"), "--out", str(run), "--config", str(tiny_config),
                 "--seed", "5", "--quiet", "--set", "rank.k=7", "--set", "seed=9",
                 "--set", "homepage.repeat_purchase_categories=[Books, Pets]"]) == 0
    written = load_config(run / "config.yaml")
    assert written.rank.k == 7 and written.homepage.repeat_purchase_categories == ["Books", "Pets"]
    assert written.seed == 9  # --set is applied after --seed
    assert written.train.epochs == 4 and written.device == "cpu"  # the rest comes from --config
    # a later stage given only --set starts from RUN/config.yaml and writes the result back
    assert main(["graph", "--out", str(run), "--quiet", "--set", "rank.k=8", "--set", "rank.k=11"]) == 0
    again = load_config(run / "config.yaml")
    assert again.rank.k == 11 and again.seed == 9 and again.train.epochs == 4  # a repeated key: the last wins


@pytest.mark.parametrize("command", STAGES)
def test_set_with_an_unknown_key_is_a_user_error_on_every_command(command, tmp_path, capsys):
    assert main([*stage_args(command, tmp_path / "r"), "--set", "train.nope=1"]) == 2
    assert_one_line_error(capsys, "--set", "train.nope", "unknown key")


@pytest.mark.parametrize("option,fragments", [
    ("train.epochs=-1", ["--set", "train.epochs", "greater than or equal to 1"]),
    ("rank=3", ["--set", "rank"]),
    ("foo", ["--set", "'foo'", "section.key=value"]),
    ("=3", ["--set", "section.key=value"]),
    ("train.lr=[1", ["--set", "train.lr", "not valid YAML"]),
    ("nope.k=1", ["--set", "nope.k"]),
])
def test_bad_set_option_exits_2_naming_the_key(option, fragments, tmp_path, capsys):
    assert main([*stage_args("train", tmp_path / "r"), "--set", option]) == 2
    assert_one_line_error(capsys, *fragments)
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_set_and_a_preset_on_a_single_stage_are_written_before_the_stage_runs(tmp_path, capsys):
    from homerank.jobs.config import load_config

    run = tmp_path / "r"
    # no ETL output yet: graph fails, but only after the resolved config was written
    assert main(["graph", "--out", str(run), "--quiet", "--config", "preset:minute", "--set", "train.epochs=3",
                 "--device", "cpu"]) == 2
    assert "etl" in capsys.readouterr().err
    written = load_config(run / "config.yaml")
    assert written.train.epochs == 3 and written.ingest.format == "lightgcn" and written.device == "cpu"


def test_version(capsys):
    from homerank import __version__

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"homerank {__version__}"


def test_config_preset_resolves():
    from homerank.jobs.config import list_presets, load_config, preset_path

    assert load_config("preset:minute").train.epochs == 16
    assert load_config("preset:recipe").train.epochs == 120
    assert set(list_presets()) == {"minute", "recipe"}
    assert all(summary for summary in list_presets().values())  # each file opens with a comment line
    assert preset_path("minute").name == "minute.yaml"


def test_presets_ship_as_package_data(tmp_path):
    """Found through importlib.resources from any directory, not through the source tree's bench/ folder."""
    script = "import importlib.resources as r; print(sorted(p.name for p in r.files('homerank.presets').iterdir()))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            timeout=60)
    assert "'minute.yaml'" in result.stdout and "'recipe.yaml'" in result.stdout, result.stderr


def test_unknown_preset_exits_2_naming_the_known_ones(tmp_path, capsys):
    from homerank.engine.errors import HomerankError
    from homerank.jobs.config import load_config

    assert main([*stage_args("train", tmp_path / "r"), "--config", "preset:nope"]) == 2
    assert_one_line_error(capsys, "preset:nope", "unknown preset", "preset:minute", "preset:recipe")
    with pytest.raises(HomerankError, match="preset:minute"):
        load_config("preset:nope")


def test_help_lists_the_presets(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "preset:minute" in out and "preset:recipe" in out and "--version" in out
    assert "minute preset for LightGCN-format splits" in out  # the preset's first comment line


def test_parse_set_option_reads_values_as_yaml():
    from homerank.engine.errors import HomerankError
    from homerank.jobs.config import parse_set_option

    assert parse_set_option("train.epochs=10") == ("train.epochs", 10)
    assert parse_set_option(" train.lr = 0.5") == ("train.lr", 0.5)
    assert parse_set_option("ingest.catalogue=") == ("ingest.catalogue", None)
    assert parse_set_option("homepage.diversity=mmr") == ("homepage.diversity", "mmr")
    assert parse_set_option("evaluate.ks=[10, 20]") == ("evaluate.ks", [10, 20])
    assert parse_set_option("cluster.address=tcp://h:1=2") == ("cluster.address", "tcp://h:1=2")
    with pytest.raises(HomerankError, match="section.key=value"):
        parse_set_option("train.epochs")


def test_apply_dotted_validates_like_the_yaml():
    from homerank.engine.errors import HomerankError
    from homerank.jobs.config import JobConfig, apply_dotted

    config = apply_dotted(JobConfig(), {"rank.k": 7, "homepage.mmr_lambda": 0.5}, source="--set")
    assert config.rank.k == 7 and config.homepage.mmr_lambda == 0.5
    with pytest.raises(HomerankError, match=r"^--set: train.nope: unknown key$"):
        apply_dotted(JobConfig(), {"train.nope": 1}, source="--set")
    with pytest.raises(HomerankError, match=r"^--set: rank.k\b"):
        apply_dotted(JobConfig(), {"rank.k": 0}, source="--set")
    with pytest.raises(HomerankError, match="not a config section"):
        apply_dotted(JobConfig(), {"seed.value": 1}, source="--set")
