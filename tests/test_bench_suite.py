"""The ETL benchmark suite (``python -m bench``): its JSON contract on a tiny log, and the scaling maths."""

from __future__ import annotations

import json

import pytest

from bench.etl_suite import fit_exponent, parse_counts, scaling_summary
from tests.conftest import run_bench

CONTRACT = ("events", "workers", "seconds", "speedup_vs_pandas", "speedup_vs_polars", "client_peak_rss_bytes",
            "workers_peak_rss_bytes", "machine")
ENGINES = ("homerank", "pandas", "polars")


@pytest.mark.slow
def test_bench_etl_writes_the_contract(tmp_path):
    pytest.importorskip("polars")
    result = run_bench("etl", "--events", "20000", "--workers", "1", "--data", str(tmp_path / "data"), "--repeat",
                       "1", result=tmp_path / "x.json")
    for key in CONTRACT:
        assert key in result, key
    assert result["events"] == 20000 and result["workers"] == 1
    assert set(result["seconds"]) == set(ENGINES) and all(s > 0 for s in result["seconds"].values())
    edges = [result["edges"][engine] for engine in ENGINES]
    assert edges[0] > 0 and len(set(edges)) == 1, result["edges"]
    assert result["speedup_vs_pandas"] == pytest.approx(result["seconds"]["pandas"] / result["seconds"]["homerank"])
    assert result["speedup_vs_polars"] == pytest.approx(result["seconds"]["polars"] / result["seconds"]["homerank"])
    assert result["client_peak_rss_bytes"] > 0 and result["workers_peak_rss_bytes"] > 0
    assert all(result["peak_rss_bytes"][engine] > 0 for engine in ENGINES)
    assert result["processes"] is False  # the product's default: worker threads
    assert result["machine"]["cpu_count"] >= 1
    assert result["input_rows"] > 0 and result["generation_seconds"] > 0
    assert (tmp_path / "data" / "events-20000" / "events").is_dir()  # cached for the next run
    table = (tmp_path / "x.json").with_suffix(".md").read_text()
    assert "| homerank |" in table and "| polars |" in table


def test_fit_exponent_on_hand_made_numbers():
    sizes = [1e4, 1e5, 1e6, 1e7]
    assert fit_exponent(sizes, [3e-5 * n for n in sizes]) == pytest.approx(1.0)
    assert fit_exponent(sizes, [2e-9 * n**1.5 for n in sizes]) == pytest.approx(1.5)
    assert fit_exponent([10, 100], [7.0, 7.0]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        fit_exponent([1e5, 1e5], [1.0, 2.0])


def _run(events: int, workers: int, homerank: float) -> dict:
    return {"events": events, "workers": workers,
            "seconds": {"homerank": homerank, "pandas": events * 1e-6, "polars": events * 2e-7}}


def test_scaling_summary_exponents_and_strong_scaling():
    runs = [_run(n, w, n * 1e-5 / (1.6 if w == 2 else 1.0)) for n in (10**5, 10**6, 10**7) for w in (1, 2)]
    summary = scaling_summary(runs)
    assert summary["homerank_time_exponent"]["exponent"] == pytest.approx(1.0)
    assert summary["homerank_time_exponent"]["sizes"] == [10**5, 10**6, 10**7]
    assert summary["exponents"]["pandas"]["exponent"] == pytest.approx(1.0)
    strong = summary["strong_scaling"]
    assert strong["events"] == 10**7 and strong["baseline_workers"] == 1
    two = strong["points"][-1]
    assert two["workers"] == 2
    assert two["speedup"] == pytest.approx(1.6) and two["efficiency"] == pytest.approx(0.8)


def test_one_size_has_no_exponent():
    summary = scaling_summary([_run(10**5, 1, 1.0)])
    assert summary["homerank_time_exponent"]["exponent"] is None
    assert summary["strong_scaling"]["points"] == []


def test_counts():
    assert parse_counts("1e5, 3e5,2_000") == [100_000, 300_000, 2_000]
    with pytest.raises(ValueError):
        parse_counts("1.5")


def test_plots_from_hand_made_runs(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.etl_suite import write_plots

    runs = []
    for n in (10**5, 10**6):
        for w in (1, 2):
            run = _run(n, w, n * 1e-5 / w)
            run.update(client_peak_rss_bytes=n * 100, workers_peak_rss_bytes=n * 300,
                       peak_rss_bytes={"homerank": n * 400, "pandas": n * 200, "polars": n * 150})
            runs.append(run)
    scaling = {**scaling_summary(runs), "runs": runs, "processes": True}
    written = write_plots(scaling, tmp_path, "-processes")
    assert written == ["time_vs_events-processes.png", "memory_vs_events-processes.png",
                       "strong_scaling-processes.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)


def test_strong_scaling_maths_and_a_missing_peer(tmp_path, monkeypatch):
    import bench.etl_strong as strong

    seconds = {("homerank", 1): 12.0, ("homerank", 2): 8.0, ("homerank", 4): 5.0, ("pandas", 1): 16.0}

    def fake_engine(engine, events_dir, workers, processes, threads_per_worker, repeat, scratch):
        return {"seconds": seconds[engine, workers], "edges": 42, "own_peak_rss_bytes": 100 * workers,
                "tree_peak_rss_bytes": 300 * workers, "threads": 1}

    monkeypatch.setattr(strong, "ensure_log", lambda root, events: {"events_dir": "x", "rows": events})
    monkeypatch.setattr(strong, "run_engine", fake_engine)
    monkeypatch.setattr(strong, "installed_peers", lambda: ["pandas"])  # polars "not installed"
    result = strong.strong_scaling(1000, [4, 1, 2], data_root=tmp_path)
    assert [p["workers"] for p in result["points"]] == [1, 2, 4] and result["baseline_workers"] == 1
    assert [p["speedup"] for p in result["points"]] == pytest.approx([1.0, 1.5, 2.4])
    assert [p["efficiency"] for p in result["points"]] == pytest.approx([1.0, 0.75, 0.6])
    assert result["points"][2]["vs_peers"] == {"pandas": pytest.approx(16 / 5)}
    assert result["peers_skipped"] == ["polars"] and result["edges_agree"]
    strong.write_strong(result, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["points"][1]["seconds"] == 8.0
    assert "| 4 | 5.00 | 2.40 | 0.60 |" in (tmp_path / "s.md").read_text()


def test_out_of_core_phase_seconds_from_the_stage_log():
    """The phase times come from the ETL's cumulative progress lines, rich-wrapped as in a real log; a run that
    stopped early has only the phases it finished."""
    from bench.out_of_core import phase_seconds

    log = ("INFO     etl: ingest done at 84.6s\n[19:08:48] INFO     etl: 202 user partitions, events weighted and\n"
           "                             aggregated at 139.7s\nINFO     etl: k-core (3 rounds) done at 263.4s\n"
           "INFO     etl: encoded, split and\n      written at 388.7s\n")
    assert phase_seconds(log) == {"ingest": 84.6, "weight_aggregate_write_interactions": 55.1, "kcore": 123.7,
                                  "encode_split_write": 125.3}
    assert phase_seconds("etl: ingest done at 10.0s\n") == {"ingest": 10.0}
    assert phase_seconds("") == {}


def test_out_of_core_reads_where_the_intermediates_were_kept():
    from bench.out_of_core import intermediates_mode

    disk = ("INFO homerank.engine.intermediates: intermediates: Parquet files in\n   /runs/x/intermediates "
            "(setting auto; events ~4.11 GiB in memory, workers' limit 4.0 GiB)\n")
    assert intermediates_mode(disk) == "disk"
    assert intermediates_mode("intermediates: persisted on the workers (setting auto; ...)") == "memory"
    assert intermediates_mode("etl: ingest done at 10.0s") is None


@pytest.mark.slow
def test_bench_out_of_core_on_a_tiny_log(tmp_path):
    """`python -m bench out-of-core` end to end on a tiny log: exit 0, the ETL's stats, its phases, samples with
    one entry per worker, and a client peak."""
    result = run_bench("out-of-core", "--events", "20000", "--workers", "1", "--memory-limit", "1GiB", "--data",
                       str(tmp_path / "data"), result=tmp_path / "ooc.json")
    assert result["exit_status"] == 0 and result["worker_restarts"] == 0
    assert result["etl_stats"]["rows"]["in"] == result["events"] > 10_000
    assert list(result["phases_seconds"]) == ["ingest", "weight_aggregate_write_interactions", "kcore",
                                              "encode_split_write"]
    assert result["workers_total_memory_limit_bytes"] == 2**30
    assert result["client_peak_rss_bytes"] > 0 and result["samples"]
    assert all(len(row[2]) == 4 for row in result["samples"])  # [process, managed, spilled, on disk] of the worker


def test_out_of_core_scaling_fits_the_runs_that_exited_zero(tmp_path):
    from bench.out_of_core_scaling import markdown, plot, reusable, summarise

    def run(events, seconds, status=0):
        return {"events": events, "exit_status": status, "process_seconds": seconds, "workers": 2,
                "memory_limit_per_worker_bytes": 2**31, "client_peak_rss_bytes": events // 1000,
                "workers_peak_process_bytes": [1, 2], "spill_directory_peak_bytes_sampled": 0, "worker_restarts": 0,
                "phases_seconds": {"ingest": seconds / 2, "kcore": seconds / 4 * (events / 10**6) ** 0.5}}

    runs = [run(10**6, 10.0), run(10**7, 100.0), run(10**8, 1000.0), run(3 * 10**8, 50.0, status=1)]
    summary = summarise(runs, 2, 2**31)
    assert summary["time_exponent"]["sizes"] == [10**6, 10**7, 10**8]  # the failed size is listed, not fitted
    assert summary["time_exponent"]["exponent"] == pytest.approx(1.0)
    assert summary["phase_exponents"]["ingest"] == pytest.approx(1.0)
    assert summary["phase_exponents"]["kcore"] == pytest.approx(1.5)
    assert [r["events"] for r in summary["runs"]] == [10**6, 10**7, 10**8, 3 * 10**8]
    assert summary["client_peak_rss_bytes_max"] == 3 * 10**5 and summary["workers_peak_process_bytes_max"] == 2
    assert "**1.00**" in markdown(summary)
    plot(summary, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    path = tmp_path / "r.json"
    path.write_text(json.dumps(runs[0]))
    assert reusable(path, 2, 2**31) is not None and reusable(path, 4, 2**31) is None
    path.write_text(json.dumps(runs[3]))
    assert reusable(path, 2, 2**31) is None  # a failed run is run again


def test_memory_sampler_counts_a_child_and_lists_descendants_once_a_second(monkeypatch):
    """The ETL runner's sampler sees a child process's memory (its RSS and its kernel peak) while reading the
    process table only at its listings (first sample, then every ``list_every`` seconds, and the last), not at each
    of its samples: psutil's listing reads every process's stat file, which cost the measured engines CPU and GIL."""
    import subprocess
    import sys
    import time

    import psutil

    from bench.etl_runner import MemorySampler

    listings = []
    children = psutil.Process.children
    monkeypatch.setattr(psutil.Process, "children", lambda self, recursive=False: listings.append(1) or
                        children(self, recursive=recursive))
    # the child holds ~200 MB of touched pages for a second
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(1.5)"])
    try:
        with MemorySampler(interval=0.02, list_every=10.0) as memory:
            time.sleep(1.0)
    finally:
        child.wait()
    assert memory.samples > 20  # ~50 samples in the second
    assert len(listings) == 2  # the first and the last sample only: list_every is longer than the run
    assert memory.max_descendants == 1
    assert memory.descendants_peak >= 200 * 2**20  # sampled while it held them
    assert max(memory.child_hwm.values()) >= 200 * 2**20
