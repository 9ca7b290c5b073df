"""The whole-pipeline benchmark (``python -m bench pipeline``): its JSON contract on a tiny log, and its parts
(tree RSS sampling, user counting, the naive peer, the scaling fit) on hand-made cases."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from bench.pipeline_bench import (
    CONTRACT,
    STAGES,
    count_users,
    measure_command,
    overrides,
    peer_loop,
    point_markdown,
    result_name,
    scaling_summary,
)
from tests.conftest import run_bench


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_pipeline_writes_the_contract(tmp_path):
    # six `homerank` processes: each pays the CLI's start-up (about 5 s idle, 20+ s on a loaded 2-core machine)
    result = run_bench("pipeline", "--events", "20000", "--workers", "1", "--epochs", "1", "--steps-per-epoch", "2",
                       "--peer-users", "100", "--device", "cpu", "--data", str(tmp_path / "data"),
                       result=tmp_path / "p.json", timeout=580)
    for key in CONTRACT:
        assert key in result, key
    assert result["events"] == 20000 and result["workers"] == 1
    assert list(result["stages"]) == list(STAGES)
    for stage, measured in result["stages"].items():
        assert measured["seconds"] > 0 and measured["peak_rss_bytes"] > 0, stage
        assert 0 <= measured["own_seconds"] <= measured["seconds"], stage
        assert 0 < measured["process_peak_rss_bytes"] <= measured["peak_rss_bytes"], stage
    assert result["etl_processes"] is False
    assert result["process_peak_rss_bytes"] == max(m["process_peak_rss_bytes"] for m in result["stages"].values())
    assert result["client_peak_rss_bytes"] == max(m["peak_rss_bytes"] for m in result["stages"].values())
    assert result["users"]["rank"] > 0 and result["users"]["homepage"] > 0
    assert result["rank_users_per_s"] == pytest.approx(result["users"]["rank"] / result["stages"]["rank"]["seconds"])
    for page in ("rank", "homepage"):
        assert result["peer"][f"{page}_users_per_s"] > 0
        assert result["speedup_vs_peer"][page] == pytest.approx(
            result[f"{page}_users_per_s"] / result["peer"][f"{page}_users_per_s"])
    assert result["peer"]["blas_threads"] == 1
    assert result["config"]["train.epochs"] == 1 and result["config"]["train.steps_per_epoch"] == 2
    assert result["config"]["cluster.n_workers"] == 1 and result["config"]["ingest.catalogue"].endswith("items.parquet")
    assert result["train"]["epochs"] == 1  # train/summary.json of the run: the bound was applied
    assert result["machine"]["cpu_count"] >= 1
    assert "| homepage |" in (tmp_path / "p.json").with_suffix(".md").read_text()


def test_measure_command_sums_the_process_tree(tmp_path):
    # a parent that starts a child holding 200 MiB: the tree's peak must count the child's memory
    child = "import time; x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    measured = measure_command([sys.executable, "-c", parent], log_file=tmp_path / "log.txt", poll_seconds=0.1)
    assert measured["returncode"] == 0
    assert measured["seconds"] >= 1.5
    assert measured["processes"] == 2
    assert measured["sampled_peak_rss_bytes"] > 200 * 2**20
    assert measured["peak_rss_bytes"] >= measured["sampled_peak_rss_bytes"]


def test_measure_command_reports_a_failure(tmp_path):
    measured = measure_command([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                               log_file=tmp_path / "log.txt")
    assert measured["returncode"] == 3
    assert "boom" in (tmp_path / "log.txt").read_text()


def test_count_users_reads_distinct_ids(tmp_path):
    folder = tmp_path / "rankings"
    folder.mkdir()
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5]}).to_parquet(folder / "part-00000.parquet")
    pd.DataFrame({"user_id": [3, 3], "item_id": [5, 6]}).to_parquet(folder / "part-00001.parquet")
    (folder / "_SUCCESS").write_text("")
    assert count_users(folder) == 3


def test_peer_loop_masks_seen_items_and_ranks():
    items = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    users = np.array([[1.0, 0.0]], dtype=np.float32)
    _, top = peer_loop(users, items, [np.array([0])], [2], k=2, homepage=False)
    assert top.tolist() == [1, 3]  # item 0 scores best but was seen
    _, (top, similar) = peer_loop(users, items, [np.array([0])], [2], k=2, homepage=True)
    assert top.tolist() == [1, 3] and similar.tolist() == [3, 1]  # nearest to item 2, itself masked


def _point(events: int, scale: float) -> dict:
    stages = {stage: {"seconds": 10 + scale * events * 1e-6 * (i + 1), "peak_rss_bytes": 2**30,
                      "own_seconds": scale * events * 1e-6 * (i + 1), "overhead_seconds": 10}
              for i, stage in enumerate(STAGES)}
    return {"events": events, "workers": 2, "stages": stages, "rank_users_per_s": 1000.0,
            "homepage_users_per_s": 500.0, "peer": {"rank_users_per_s": 2000.0, "homepage_users_per_s": 1000.0},
            "speedup_vs_peer": {"rank": 0.5, "homepage": 0.5}, "client_peak_rss_bytes": 2**30,
            "total_seconds": sum(s["seconds"] for s in stages.values())}


def test_scaling_summary_fits_each_stage():
    summary = scaling_summary([_point(n, 3.0) for n in (10**7, 10**6, 3 * 10**6)])
    assert summary["sizes"] == [10**6, 3 * 10**6, 10**7]
    for stage in STAGES:
        assert summary["exponents_own_clock"][stage]["exponent"] == pytest.approx(1.0)
        assert 0 < summary["exponents"][stage]["exponent"] < 1.0  # the fixed start-up flattens the wall clock
    assert scaling_summary([_point(10**6, 1.0)])["exponents"]["etl"]["exponent"] is None


def test_point_markdown_renders():
    result = {**_point(10**6, 1.0), "config": {"train.epochs": 3, "train.steps_per_epoch": 8, "device": "cpu"},
              "input_rows": 10**6, "input_bytes": 2**24, "load_average": {"start": [1, 1, 1], "end": [1, 1, 1]},
              "users": {"rank": 20000, "homepage": 20000},
              "own_clock": {"rank_users_per_s": 4000.0, "homepage_users_per_s": None,
                            "speedup_vs_peer": {"rank": 2.0, "homepage": None}},
              "machine": {"cpu_count": 2}}
    result["peer"].update(users=1000, items=5000, dim=64, k=20)
    text = point_markdown(result)
    assert "| rank | 20000 | 1000 | 4000 | 2000 | 0.5 | 2 |" in text
    assert "| homepage | 20000 | 500 | n/a |" in text


def test_scaling_plot_and_table(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.pipeline_bench import scaling_markdown, write_plot

    runs = [_point(n, 3.0) for n in (10**6, 3 * 10**6)]
    for run in runs:
        run.update(users={"rank": 1, "homepage": 1}, load_average={}, file="x.json", config={})
    scaling = {**scaling_summary(runs), "workers": 2, "runs": runs, "machine": {"cpu_count": 2}}
    scaling["plot"] = write_plot(scaling, tmp_path / "time_vs_events.png")
    assert (tmp_path / "time_vs_events.png").stat().st_size > 1000
    text = scaling_markdown(scaling)
    assert "| train | " in text and "| all stages | " in text and "time_vs_events.png" in text


def test_the_etl_runs_on_worker_processes_when_asked(tmp_path):
    from homerank.jobs.config import JobConfig, apply_dotted, parse_set_option

    threads = overrides(tmp_path / "items.parquet", 2, 1, 2)
    assert threads["cluster.n_workers"] == 1 and threads["cluster.threads_per_worker"] == 2
    assert "cluster.processes" not in threads and result_name(3, 2) == "events-3-workers-2"
    processes = overrides(tmp_path / "items.parquet", 2, 1, 2, processes=True)
    config = apply_dotted(JobConfig(), dict(parse_set_option(f"{key}={value}") for key, value in processes.items()))
    assert config.cluster.processes is True and config.cluster.n_workers == 2 and config.cluster.threads_per_worker == 1
    assert result_name(3, 2, processes=True) == "events-3-workers-2-processes"
