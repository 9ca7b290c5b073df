"""Out-of-core scaling (issue 17, targets): the out-of-core ETL (`bench.out_of_core`) at several log sizes with the
same workers and memory limit, and the fitted exponent b of time = a * events**b (least squares in log-log,
`bench.etl_suite.fit_exponent`), for the whole stage and for each of its phases.

``python -m bench out-of-core-scaling --events 1e6,1e7,1e8,3e8 --workers 2 --memory-limit 2GiB`` runs every size
(one `bench.out_of_core.run_out_of_core` each, writing ``out-of-core-events-N.json`` as that command does);
``--reuse`` takes a size's existing JSON instead when it ran with the same workers and limit and exited 0 (a 3·10^8
run takes about half an hour here). Writes ``out-of-core-scaling.json``, a Markdown table next to it and
``out_of_core_time_vs_events.png``. Only runs that exited 0 enter the fit; the others are listed with their status.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.etl_suite import fit_exponent, say, write_atomic
from bench.out_of_core import PHASES, run_out_of_core

SUMMARY = "out-of-core-scaling.json"
PLOT = "out_of_core_time_vs_events.png"


def size_path(out_dir: Path, events: int) -> Path:
    return out_dir / f"out-of-core-events-{events}.json"


def reusable(path: Path, workers: int, limit_bytes: int) -> dict[str, Any] | None:
    """The run in ``path`` when it exited 0 with ``workers`` workers capped at ``limit_bytes`` each, else None."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    same = result.get("workers") == workers and result.get("memory_limit_per_worker_bytes") == limit_bytes
    return result if same and result.get("exit_status") == 0 else None


def summarise(runs: list[dict[str, Any]], workers: int, limit_bytes: int) -> dict[str, Any]:
    """The scaling summary of ``runs`` (`run_out_of_core` results): exponents over the runs that exited 0."""
    done = sorted((r for r in runs if r.get("exit_status") == 0), key=lambda r: r["events"])
    rows = [{"events": r["events"], "exit_status": r.get("exit_status"), "seconds": r.get("process_seconds"),
             "phases_seconds": r.get("phases_seconds", {}), "intermediates": r.get("intermediates"),
             "client_peak_rss_bytes": r.get("client_peak_rss_bytes"),
             "workers_peak_process_bytes": max(r.get("workers_peak_process_bytes") or [0]),
             "spill_directory_peak_bytes_sampled": r.get("spill_directory_peak_bytes_sampled"),
             "worker_restarts": r.get("worker_restarts"), "input_parquet_bytes": r.get("input_parquet_bytes"),
             "when": (r.get("machine") or {}).get("when")} for r in sorted(runs, key=lambda r: r["events"])]
    sizes = [r["events"] for r in done]
    fit: dict[str, Any] = {"exponent": None, "sizes": sizes, "why": "needs two sizes that exited 0"}
    phases: dict[str, Any] = {}
    if len(set(sizes)) >= 2:
        fit = {"exponent": fit_exponent(sizes, [r["process_seconds"] for r in done]), "sizes": sizes}
        for name, _ in PHASES:
            points = [(r["events"], r["phases_seconds"][name]) for r in done
                      if r.get("phases_seconds", {}).get(name, 0) > 0]
            if len({n for n, _ in points}) >= 2:
                phases[name] = fit_exponent([n for n, _ in points], [s for _, s in points])
    return {"workers": workers, "memory_limit_per_worker_bytes": limit_bytes,
            "workers_total_memory_limit_bytes": workers * limit_bytes, "time_exponent": fit,
            "phase_exponents": phases,
            "client_peak_rss_bytes_max": max((r["client_peak_rss_bytes"] or 0 for r in rows), default=0),
            "workers_peak_process_bytes_max": max((r["workers_peak_process_bytes"] or 0 for r in rows), default=0),
            "runs": rows, "machine": (done[-1] if done else runs[-1] if runs else {}).get("machine")}


def markdown(summary: dict[str, Any]) -> str:
    gib = 2**30
    fit = summary["time_exponent"]
    lines = [f"# Out-of-core ETL scaling: {summary['workers']} worker processes x "
             f"{summary['memory_limit_per_worker_bytes'] / gib:.1f} GiB",
             "",
             "Each size: `python -m bench out-of-core --events N` (bench/out_of_core.py); time is the `homerank etl` "
             "process's wall time, joined to a cluster started beforehand; intermediates: where the ETL kept its "
             "frames between passes (`cluster.intermediates: auto` decides by size; homerank.engine.intermediates).",
             "",
             "| events | exit | intermediates | seconds | ingest | aggregate | k-core | encode/split/write | "
             "client peak MiB | worker peak MiB | spill peak GiB | restarts | when |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        p = r["phases_seconds"]
        cells = [f"{r['events']:,}", str(r["exit_status"]), str(r["intermediates"]), f"{r['seconds']}",
                 *(str(p.get(name, "")) for name, _ in PHASES),
                 str((r["client_peak_rss_bytes"] or 0) >> 20), str((r["workers_peak_process_bytes"] or 0) >> 20),
                 f"{(r['spill_directory_peak_bytes_sampled'] or 0) / gib:.1f}", str(r["worker_restarts"]),
                 str(r["when"])]
        lines.append("| " + " | ".join(cells) + " |")
    exponent = fit["exponent"]
    lines += ["", f"Fitted exponent of time vs events over {fit['sizes']}: "
              + (f"**{exponent:.2f}**" if exponent is not None else f"n/a ({fit.get('why')})")]
    if summary["phase_exponents"]:
        lines.append("Per phase: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["phase_exponents"].items()))
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in summary["runs"] if r["exit_status"] == 0]
    if not done:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    events = [r["events"] for r in done]
    axis.loglog(events, [r["seconds"] for r in done], "o-", label="homerank etl (out of core)")
    first = done[0]
    axis.loglog(events, [first["seconds"] * n / first["events"] for n in events], "--", color="grey",
                label="linear from the smallest size")
    axis.set_xlabel("events")
    axis.set_ylabel("seconds")
    exponent = summary["time_exponent"]["exponent"]
    axis.set_title(f"{summary['workers']} workers x {summary['memory_limit_per_worker_bytes'] / 2**30:.0f} GiB"
                   + (f", exponent {exponent:.2f}" if exponent is not None else ""))
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_scaling(sizes: list[int], workers: int, memory_limit: str, data_root: Path, out_dir: Path, reuse: bool,
                partition_rows: int = 500_000, extra_settings: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every size (reused or run), then the summary, its table and plot under ``out_dir``."""
    from dask.utils import parse_bytes

    limit = parse_bytes(memory_limit)
    runs = []
    for events in sizes:
        path = size_path(out_dir, events)
        found = reusable(path, workers, limit) if reuse else None
        if found is not None:
            say(f"out-of-core-scaling: {events} events: reusing {path} ({found['process_seconds']} s)")
            runs.append(found)
            continue
        runs.append(run_out_of_core(events, workers, memory_limit, data_root, data_root / "out-of-core", path,
                                    partition_rows, extra_settings))
    summary = summarise(runs, workers, limit)
    write_atomic(out_dir / SUMMARY, json.dumps(summary, indent=1, default=str) + "\n")
    write_atomic(out_dir / SUMMARY.replace(".json", ".md"), markdown(summary))
    plot(summary, out_dir / PLOT)
    return summary
