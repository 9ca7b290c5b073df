"""Crash and resume with a real SIGKILL: the resumed run ends exactly where an uninterrupted one does."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from homerank.jobs.cli import main
from tests.conftest import homepage_config

CONFIG = """
seed: 5
device: cpu
interactions: {min_user_interactions: 3, min_item_interactions: 3}
train: {embedding_dim: 32, num_layers: 2, epochs: 30, batch_size: 1024, lr: 0.01, checkpoint_every: 1,
        keep_checkpoints: 2, patience: 100, threads: 1}
evaluate: {ks: [10, 20]}
rank: {k: 10}
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One generated log and its ETL and graph (``prepared``), then train, evaluate and rank on a copy of them
    without interruption (``done``): where both kill-and-resume tests below must end. Read-only: they copy it."""
    from homerank.engine.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("uninterrupted")
    # a small log (the ETL and a training take a few seconds); the 30 epochs of about 0.05 s each on a quiet machine
    # leave over a second between the checkpoint the tests wait for (epoch 3 or 4) and the end of the training
    generate(root / "log", SyntheticSpec(users=800, items=400, events=40_000, users_per_partition=400, seed=3))
    config = root / "c.yaml"
    config.write_text(CONFIG)
    prepared = root / "prepared"
    for stage in (["etl", "--input", str(root / "log" / "events")], ["graph"]):
        assert main([*stage, "--out", str(prepared), "--config", str(config), "--quiet"]) == 0
    done = root / "done"
    shutil.copytree(prepared, done)
    for command in ("train", "evaluate", "rank"):
        assert main([command, "--out", str(done), "--quiet"]) == 0
    return {"events": root / "log" / "events", "config": config, "prepared": prepared, "done": done}


@pytest.mark.slow
def test_sigkill_during_training_then_resume(uninterrupted, tmp_path):
    first = uninterrupted["done"]
    second = tmp_path / "killed"
    shutil.copytree(uninterrupted["prepared"], second)

    process = subprocess.Popen([sys.executable, "-m", "homerank.jobs.cli", "train", "--out", str(second), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (second / "checkpoints" / "epoch_0003.pt").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (second / "checkpoints" / "best.pt").exists()  # it really died mid-training

    assert main(["train", "--resume", "--out", str(second), "--quiet"]) == 0
    for command in ("evaluate", "rank"):
        assert main([command, "--out", str(second), "--quiet"]) == 0
    expected = json.loads((first / "metrics.json").read_text())
    resumed = json.loads((second / "metrics.json").read_text())
    assert resumed["test"] == expected["test"] and resumed["epochs"] == expected["epochs"] == 30
    pd.testing.assert_frame_equal(pd.read_parquet(second / "rankings"), pd.read_parquet(first / "rankings"))
    log = (second / "logs" / "homerank.log").read_text()
    assert "resuming from" in log


def test_run_resume_skips_completed_stages_and_reruns_after_a_change(homepage_run, tmp_path):
    # homepage_run (conftest) is this `run` with this config, done once per session; the test changes a copy of it
    source, log = homepage_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    config = homepage_config(tmp_path / "c.yaml", log)
    args = ["run", "--input", str(log / "events"), "--out", str(run), "--config", str(config), "--quiet"]
    stages = json.loads((run / "logs" / "stages.json").read_text())
    assert all(entry["status"] == "done" for entry in stages.values()) and len(stages) == 6
    metrics = (run / "metrics.json").read_text()
    marker = (run / "rankings" / "_SUCCESS.json").stat().st_mtime_ns
    log_start = len((run / "logs" / "homerank.log").read_text())
    assert main([*args, "--resume"]) == 0
    resumed = (run / "logs" / "homerank.log").read_text()[log_start:]
    assert all(f"stage {stage}: up to date" in resumed for stage in stages) and ": start" not in resumed
    assert (run / "rankings" / "_SUCCESS.json").stat().st_mtime_ns == marker  # nothing rewritten
    assert (run / "metrics.json").read_text() == metrics
    # a changed training setting reruns train and everything after it, not the ETL
    changed = tmp_path / "changed.yaml"
    changed.write_text(config.read_text().replace("epochs: 3", "epochs: 2"))
    etl_before = (run / "etl" / "stats.json").stat().st_mtime_ns
    assert main([*args[:-3], "--config", str(changed), "--quiet", "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert (run / "etl" / "stats.json").stat().st_mtime_ns == etl_before  # upstream of the change: kept


@pytest.mark.slow
def test_sigkill_during_run_then_run_resume(uninterrupted, tmp_path):
    """`run` killed in training, then `run --resume`: the ETL and graph are kept and training goes on from the last
    checkpoint; metrics and rankings are those of the uninterrupted stages."""
    args = ["run", "--input", str(uninterrupted["events"]), "--config", str(uninterrupted["config"]), "--quiet"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "homerank.jobs.cli", *args, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "epoch_0004.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "rankings").exists()  # no partial output that looks complete
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    log = (killed / "logs" / "homerank.log").read_text()
    assert "stage etl: up to date" in log and "stage graph: up to date" in log and "resuming from" in log
    clean = json.loads((uninterrupted["done"] / "metrics.json").read_text())
    assert json.loads((killed / "metrics.json").read_text())["test"] == clean["test"]
    expected = pd.read_parquet(uninterrupted["done"] / "rankings")
    pd.testing.assert_frame_equal(pd.read_parquet(killed / "rankings"), expected)
