"""Data-quality gates: checked on the ETL statistics before anything is trained, so a broken upstream drop
never ships a broken ranking. Results go to ``etl/gates.json`` and the report; a failure raises `GateError`
(exit status 3) naming the gate, the measured value and the threshold."""

from __future__ import annotations

from typing import Any

from homerank.engine.errors import GateError
from homerank.jobs.config import GatesConfig


def evaluate_gates(stats: dict[str, Any], previous: dict[str, Any] | None, gates: GatesConfig) -> list[dict]:
    """One record per gate: name, value, threshold, passed."""
    results = []
    rows = stats["rows"]
    if gates.max_quarantined_share is not None:
        share = rows["quarantined"] / rows["in"] if rows["in"] else 0.0
        results.append({"gate": "max_quarantined_share", "value": round(share, 6),
                        "threshold": gates.max_quarantined_share, "passed": share <= gates.max_quarantined_share})
    train_edges = stats["split"]["train"]
    results.append({"gate": "min_train_edges", "value": train_edges, "threshold": gates.min_train_edges,
                    "passed": train_edges >= gates.min_train_edges})
    if gates.max_edge_change is not None:
        if previous is None:
            results.append({"gate": "max_edge_change", "value": None, "threshold": gates.max_edge_change,
                            "passed": True, "note": "no previous ETL in this run directory"})
        else:
            before = previous["split"]["train"]
            change = abs(train_edges - before) / before if before else float("inf")
            results.append({"gate": "max_edge_change", "value": round(change, 6), "threshold": gates.max_edge_change,
                            "passed": change <= gates.max_edge_change, "previous_train_edges": before})
    return results


def enforce(results: list[dict]) -> None:
    failed = [r for r in results if not r["passed"]]
    if failed:
        first = failed[0]
        raise GateError(f"data-quality gate {first['gate']} failed: {first['value']} vs threshold "
                        f"{first['threshold']} (see etl/gates.json; relax gates.{first['gate']} to proceed)")
