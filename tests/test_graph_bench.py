"""The graph benchmark (``python -m bench graph``): its JSON contract end to end on a tiny log, the cached ETL run,
the networkx skip rule and the loud failure when the engines disagree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.graph_bench import NX_BYTES_PER_EDGE, check_agreement, ensure_etl_run, networkx_plan
from tests.conftest import run_bench

CONTRACT = ("events", "workers", "edges", "seconds", "speedup_vs_scipy", "speedup_vs_networkx", "components",
            "peak_rss_bytes", "machine")
ENGINES = ("homerank", "scipy", "networkx")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_graph_writes_the_contract_and_reuses_the_etl(tmp_path):
    # about 40 s idle (an ETL and three runner processes, each paying its imports), 60+ s on a loaded 2-core machine
    result = run_bench("graph", "--events", "10000", "--workers", "1", "--repeat", "1", "--data",
                       str(tmp_path / "data"), result=tmp_path / "g.json", timeout=280)
    for key in CONTRACT:
        assert key in result, key
    assert result["events"] == 10000 and result["workers"] == 1
    assert set(result["seconds"]) == set(ENGINES) and all(s > 0 for s in result["seconds"].values())
    # every engine ran and agrees with homerank's graph stage on the edges and the components
    assert result["agree"] is True
    assert result["edges"] > 0 and result["components"] >= 1
    assert result["edges_by_engine"] == {engine: result["edges"] for engine in ENGINES}
    assert result["components_by_engine"] == {engine: result["components"] for engine in ENGINES}
    stats = json.loads((Path(result["etl"]["run"]) / "graph" / "stats.json").read_text())
    assert (stats["edges"], stats["components"]) == (result["edges"], result["components"])  # the stage's own file
    seconds = result["seconds"]
    assert result["speedup_vs_scipy"] == pytest.approx(seconds["scipy"] / seconds["homerank"])
    assert result["speedup_vs_networkx"] == pytest.approx(seconds["networkx"] / seconds["homerank"])
    assert all(result["peak_rss_bytes"][engine] > 0 for engine in ENGINES)
    assert result["networkx"]["ran"] is True and result["networkx"]["skip_reason"] is None
    assert result["machine"]["cpu_count"] >= 1
    assert result["etl"]["reused"] is False
    table = (tmp_path / "g.json").with_suffix(".md").read_text()
    assert "| homerank |" in table and "| networkx |" in table

    # a second point on the same log (any worker count) reuses the ETL run directory instead of running it again
    cached = ensure_etl_run(tmp_path / "data", 10000, 2)
    assert cached["reused"] is True and cached["run"] == result["etl"]["run"]


def test_networkx_is_skipped_with_a_reason_above_its_budget():
    assert networkx_plan(1_000, budget_seconds=300, available_bytes=2**34)["skip_reason"] is None
    slow = networkx_plan(10**9, budget_seconds=300, available_bytes=2**50)
    assert "budget" in slow["skip_reason"] and slow["estimated_seconds"] > 300
    big = networkx_plan(10**6, budget_seconds=10**9, available_bytes=NX_BYTES_PER_EDGE * 10**6)
    assert "available" in big["skip_reason"] and "budget" not in big["skip_reason"]


def test_a_disagreement_stops_before_the_result_is_written(tmp_path):
    path = tmp_path / "g.json"
    result = {"agree": False, "edges_by_engine": {"homerank": 10, "scipy": 9}, "components_by_engine": {},
              "events": 1, "etl": {"run": "RUN"}}
    with pytest.raises(SystemExit, match="disagree"):
        check_agreement(result, path)
    assert not path.exists()
    assert json.loads((tmp_path / "g.mismatch.json").read_text())["edges_by_engine"]["scipy"] == 9
