"""The ETL benchmark suite (issue 17, item 8): homerank's ETL stage vs the same core work in pandas and polars.

``python -m bench etl`` measures one (events, workers) point, ``python -m bench all`` a grid of them plus the
scaling summary and plots. Each engine runs in its own subprocess (`bench.etl_runner`) so that its peak memory
is its own; the log is generated once per size with the project's generator and cached outside git.
See bench/README.md for the JSON keys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "runs" / "bench-data"
DEFAULT_OUT = ROOT / "bench" / "results" / "etl"
ENGINES = ("homerank", "pandas", "polars")
PEERS = ("pandas", "polars")
SEED = 42
MIB = 2**20


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_counts(text: str) -> list[int]:
    """'1e5,1e6,2_000' -> [100000, 1000000, 2000]."""
    values = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if part:
            value = float(part)
            if value < 1 or value != int(value):
                raise ValueError(f"{part!r} is not a positive whole number")
            values.append(int(value))
    if not values:
        raise ValueError(f"no numbers in {text!r}")
    return values


def synthetic_spec(events: int):  # -> SyntheticSpec
    from homerank.engine.synthetic import SyntheticSpec

    return SyntheticSpec(users=max(1_000, events // 50), items=max(500, events // 200), events=events, seed=SEED)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` now; files that vanish while it is walked (a spill directory) count 0."""
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(directory, name))
            except OSError:
                pass
    return total


def ensure_log(data_root: Path, events: int) -> dict[str, Any]:
    """``data_root/events-N/{events/, items.parquet, spec.json}``: generated once, reused while spec.json matches.
    spec.json is written last, so a generation that was killed is redone."""
    spec = synthetic_spec(events)
    folder = data_root / f"events-{events}"
    marker = folder / "spec.json"
    wanted = asdict(spec)
    if marker.exists():
        cached = json.loads(marker.read_text())
        if cached.get("spec") == wanted and (folder / "events").is_dir():
            say(f"log: reusing {folder} ({cached['rows']} rows, generated in {cached['generation_seconds']:.1f}s)")
            return {**cached, "generated_now": False, "events_dir": str(folder / "events")}
        say(f"log: {marker} was made with another spec; generating again")
    from homerank.engine.synthetic import generate

    say(f"log: generating {events} events ({spec.users} users, {spec.items} items, seed {spec.seed}) into {folder}")
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    summary = generate(folder, spec)
    seconds = time.perf_counter() - started
    info = {"spec": wanted, "rows": int(summary["events"]), "partitions": summary["partitions"],
            "generation_seconds": seconds, "input_bytes": folder_bytes(folder / "events")}
    tmp = marker.with_name("spec.json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, marker)
    say(f"log: {info['rows']} rows, {info['input_bytes'] / MIB:.1f} MiB, generated in {seconds:.1f}s")
    return {**info, "generated_now": True, "events_dir": str(folder / "events")}


def runner_env() -> dict[str, str]:
    """The environment of a runner subprocess: unbuffered output, the repository on the import path."""
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_runner(module: str, label: str, arguments: list[str]) -> dict[str, Any]:
    """``python -m module arguments --result FILE`` in a subprocess of its own (so that its peak memory is its own);
    its JSON result, with ``process_seconds``. A failed runner ends the bench with the command in the message."""
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        result_file = Path(tmp) / "result.json"
        command = [sys.executable, "-m", module, *arguments, "--result", str(result_file)]
        say(f"{label}: {' '.join(command)}")
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=ROOT, env=runner_env(), check=False)
        if completed.returncode != 0 or not result_file.exists():
            raise SystemExit(f"bench {module.split('.')[-1].removesuffix('_runner')}: the {label} runner failed "
                             f"(exit {completed.returncode}); command: {' '.join(command)}")
        result = json.loads(result_file.read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def run_engine(engine: str, events_dir: str, workers: int, processes: bool, threads_per_worker: int,
               repeat: int, scratch: Path) -> dict[str, Any]:
    """`bench.etl_runner` in a subprocess of its own; its JSON result."""
    result = run_runner("bench.etl_runner", engine, [
        "--engine", engine, "--input", events_dir, "--workers", str(workers),
        "--processes" if processes else "--threads", "--threads-per-worker", str(threads_per_worker),
        "--repeat", str(repeat), "--scratch", str(scratch)])
    say(f"{engine}: {result['seconds']:.2f}s (median of {repeat}), k-core edges {result['edges']}, "
        f"peak RSS {result['tree_peak_rss_bytes'] / MIB:.0f} MiB")
    return result


def default_repeat(events: int) -> int:
    return 3 if events <= 1_000_000 else 1


def result_name(events: int, workers: int, processes: bool) -> str:
    return f"events-{events}-workers-{workers}{'-processes' if processes else ''}"


def etl_point(events: int, workers: int, *, processes: bool = False, threads_per_worker: int = 1,
              repeat: int | None = None, data_root: Path = DEFAULT_DATA) -> dict[str, Any]:
    """One benchmark point: the JSON contract of ``python -m bench etl`` (see bench/README.md)."""
    from bench.machine import machine_info

    repeat = repeat or default_repeat(events)
    data_root = Path(data_root)
    log_info = ensure_log(data_root, events)
    engines = {engine: run_engine(engine, log_info["events_dir"], workers, processes, threads_per_worker, repeat,
                                  data_root / "scratch") for engine in ENGINES}
    seconds = {engine: r["seconds"] for engine, r in engines.items()}
    edges = {engine: r["edges"] for engine, r in engines.items()}
    ours = engines["homerank"]
    result: dict[str, Any] = {
        "events": events,
        "workers": workers,
        "seconds": seconds,
        "speedup_vs_pandas": seconds["pandas"] / seconds["homerank"],
        "speedup_vs_polars": seconds["polars"] / seconds["homerank"],
        "client_peak_rss_bytes": ours["own_peak_rss_bytes"],
        # threads: the workers live in the client process, so their memory is the client's
        "workers_peak_rss_bytes": ours["descendants_peak_rss_bytes"] if processes else ours["own_peak_rss_bytes"],
        "workers_rss_source": ("sum of the RSS of the client's descendant processes (dask worker processes), "
                               "sampled together" if processes else
                               "threads: the workers run inside the client process, so this is the client's RSS"),
        "processes": processes,
        "threads_per_worker": threads_per_worker or None,
        "edges": edges,
        "edges_agree": len(set(edges.values())) == 1,
        "peak_rss_bytes": {engine: r["tree_peak_rss_bytes"] for engine, r in engines.items()},
        "baseline_rss_bytes": {engine: r["baseline_rss_bytes"] for engine, r in engines.items()},
        "homerank_stage_seconds": ours.get("stage_seconds"),
        "repeat": repeat,
        "seconds_all": {engine: r["seconds_all"] for engine, r in engines.items()},
        "engine_threads": {"homerank": workers * threads_per_worker if threads_per_worker else None,
                           "pandas": engines["pandas"].get("threads"), "polars": engines["polars"].get("threads")},
        "input_rows": log_info["rows"],
        "input_bytes": log_info["input_bytes"],
        "input_partitions": log_info["partitions"],
        "generation_seconds": log_info["generation_seconds"],
        "generated_now": log_info["generated_now"],
        "synthetic_spec": log_info["spec"],
        "input": log_info["events_dir"],
        "runners": engines,
        "machine": machine_info(("polars", "pyarrow", "distributed", "psutil")),
    }
    return result


def check_edges(result: dict[str, Any], json_path: Path) -> None:
    """Fail loudly when the engines disagree: the numbers go to ``*.mismatch.json``, never to the result file."""
    if not result["edges_agree"]:
        evidence = json_path.with_name(json_path.stem + ".mismatch.json")
        write_atomic(evidence, json.dumps(result, indent=2) + "\n")
        raise SystemExit(f"bench etl: the engines disagree on the k-core edge count: {result['edges']} "
                         f"({result['events']} events, input {result['input']}); details in {evidence}")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def point_markdown(result: dict[str, Any]) -> str:
    tpw = result["threads_per_worker"] or "dask's default"
    if result["processes"]:
        shape = f"worker processes, {tpw} thread(s) each"
    else:
        shape = f"threads of one dask worker: {result['workers']} x {result['threads_per_worker'] or 1}"
    lines = [f"# ETL benchmark: {result['events']} events, {result['workers']} worker(s) ({shape})", "",
             f"Input: {result['input_rows']} rows, {result['input_bytes'] / MIB:.1f} MiB of Parquet in "
             f"{result['input_partitions']} file(s), generated in {result['generation_seconds']:.1f}s. "
             f"Seconds: median of {result['repeat']}.", "",
             "| engine | seconds | k-core edges | peak RSS (MiB) | threads | homerank speedup vs engine |",
             "|---|---|---|---|---|---|"]
    ours = result["seconds"]["homerank"]
    for engine in ENGINES:
        lines.append(f"| {engine} | {result['seconds'][engine]:.2f} | {result['edges'][engine]} | "
                     f"{result['peak_rss_bytes'][engine] / MIB:.0f} | {result['engine_threads'][engine] or 'auto'} | "
                     f"{result['seconds'][engine] / ours:.2f} |")
    lines += ["",
              f"homerank: client peak RSS {result['client_peak_rss_bytes'] / MIB:.0f} MiB, workers peak RSS "
              f"{result['workers_peak_rss_bytes'] / MIB:.0f} MiB ({result['workers_rss_source']}); the stage's "
              f"own clock (without the local cluster's start and stop): {result['homerank_stage_seconds']}s.",
              "",
              "Speedup > 1 means homerank is faster. homerank's stage also quarantines rows with reasons, splits "
              "per user in time with a second aggregation pass, writes mapping tables and writes its artifacts "
              "atomically; the peers do only the core work.",
              "", f"Machine: `{json.dumps(result['machine'])}`"]
    return "\n".join(lines) + "\n"


def write_result(result: dict[str, Any], json_path: Path, markdown: Callable[[dict[str, Any]], str]) -> None:
    """``result`` as JSON at ``json_path`` and ``markdown(result)`` beside it (.md), both written atomically."""
    write_atomic(json_path, json.dumps(result, indent=2) + "\n")
    write_atomic(json_path.with_suffix(".md"), markdown(result))
    say(f"wrote {json_path} and {json_path.with_suffix('.md').name}")


def write_point(result: dict[str, Any], json_path: Path) -> None:
    write_result(result, json_path, point_markdown)


# --- scaling ---------------------------------------------------------------------------------------------------


def fit_exponent(events: list[float], seconds: list[float]) -> float:
    """Least-squares slope b of log(seconds) = a + b * log(events): time grows like events**b."""
    import numpy as np

    if len(events) != len(seconds):
        raise ValueError("events and seconds differ in length")
    if len(set(events)) < 2:
        raise ValueError("fitting an exponent needs at least two different sizes")
    if min(events) <= 0 or min(seconds) <= 0:
        raise ValueError("events and seconds must be positive")
    slope, _ = np.polyfit(np.log(np.asarray(events, float)), np.log(np.asarray(seconds, float)), 1)
    return float(slope)


def _fit(points: list[tuple[int, float]]) -> dict[str, Any]:
    sizes = [n for n, _ in points]
    if len(set(sizes)) < 2:
        return {"exponent": None, "sizes": sizes, "why": "needs at least two sizes"}
    return {"exponent": fit_exponent(sizes, [s for _, s in points]), "sizes": sizes}


def scaling_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponents of time against events (per engine; homerank per worker count) and strong scaling at the largest
    size (time with the fewest workers / time with W workers; efficiency = speedup / (W / fewest))."""
    sizes = sorted({r["events"] for r in results})
    workers = sorted({r["workers"] for r in results})
    fewest = workers[0]
    exponents: dict[str, Any] = {"homerank": {}}
    for w in workers:
        points = sorted((r["events"], r["seconds"]["homerank"]) for r in results if r["workers"] == w)
        exponents["homerank"][f"workers={w}"] = _fit(points)
    for peer in PEERS:  # the peers do not use the workers: their runs next to the fewest workers
        exponents[peer] = _fit(sorted((r["events"], r["seconds"][peer]) for r in results if r["workers"] == fewest))
    largest = sizes[-1]
    at_largest = {r["workers"]: r for r in results if r["events"] == largest}
    strong: dict[str, Any] = {"events": largest, "baseline_workers": None, "points": []}
    if len(at_largest) >= 2:
        base_workers = min(at_largest)
        base = at_largest[base_workers]["seconds"]["homerank"]
        strong["baseline_workers"] = base_workers
        for w in sorted(at_largest):
            speedup = base / at_largest[w]["seconds"]["homerank"]
            strong["points"].append({"workers": w, "seconds": at_largest[w]["seconds"]["homerank"],
                                     "speedup": speedup, "efficiency": speedup / (w / base_workers)})
    headline = exponents["homerank"][f"workers={fewest}"]
    return {
        "sizes": sizes,
        "workers": workers,
        "homerank_time_exponent": {**headline, "workers": fewest},
        "exponents": exponents,
        "strong_scaling": strong,
    }


def scaling_markdown(scaling: dict[str, Any]) -> str:
    mode = (f"worker processes, {scaling['threads_per_worker'] or 'auto'} thread(s) per worker" if scaling["processes"]
            else f"threads of one dask worker, workers x {scaling['threads_per_worker'] or 1} of them")
    lines = [f"# ETL scaling ({mode})", "",
             "| events | workers | homerank s | pandas s | polars s | vs pandas | vs polars | homerank client MiB | "
             "homerank workers MiB | pandas MiB | polars MiB | k-core edges |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in scaling["runs"]:
        s, peak = r["seconds"], r["peak_rss_bytes"]
        lines.append(f"| {r['events']} | {r['workers']} | {s['homerank']:.2f} | {s['pandas']:.2f} | "
                     f"{s['polars']:.2f} | {r['speedup_vs_pandas']:.2f} | {r['speedup_vs_polars']:.2f} | "
                     f"{r['client_peak_rss_bytes'] / MIB:.0f} | {r['workers_peak_rss_bytes'] / MIB:.0f} | "
                     f"{peak['pandas'] / MIB:.0f} | {peak['polars'] / MIB:.0f} | {r['edges']['homerank']} |")
    lines += ["", "Speedup > 1 means homerank is faster. Time grows like events^b (least squares on log-log):", ""]
    for engine, fits in scaling["exponents"].items():
        for label, fit in (fits.items() if engine == "homerank" else [("", fits)]):
            b = f"{fit['exponent']:.2f}" if fit["exponent"] is not None else "n/a"
            lines.append(f"- {engine}{' ' + label if label else ''}: b = {b} over sizes {fit['sizes']}")
    strong = scaling["strong_scaling"]
    if strong["points"]:
        lines += ["", f"Strong scaling of homerank at {strong['events']} events (baseline "
                      f"{strong['baseline_workers']} worker(s)):", "", "| workers | seconds | speedup | efficiency |",
                  "|---|---|---|---|"]
        lines += [f"| {p['workers']} | {p['seconds']:.2f} | {p['speedup']:.2f} | {p['efficiency']:.2f} |"
                  for p in strong["points"]]
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in scaling["plots"]), "",
              f"Machine: `{json.dumps(scaling['machine'])}`"]
    return "\n".join(lines) + "\n"


def _finish_plot(fig: Any, ax: Any, path: Path) -> str:
    """Legend, save as PNG, close; returns the file name."""
    import matplotlib.pyplot as plt

    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path.name


def write_plots(scaling: dict[str, Any], out: Path, tag: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, workers = scaling["runs"], scaling["workers"]
    fewest = workers[0]
    written = []

    def series(engine: str, w: int, key: str) -> tuple[list[int], list[float]]:
        points = sorted((r["events"], key_value(r, engine, key)) for r in runs if r["workers"] == w)
        return [n for n, _ in points], [v for _, v in points]

    def key_value(r: dict[str, Any], engine: str, key: str) -> float:
        if key == "seconds":
            return r["seconds"][engine]
        if key == "client":
            return r["client_peak_rss_bytes"] / MIB
        if key == "workers":
            return r["workers_peak_rss_bytes"] / MIB
        return r["peak_rss_bytes"][engine] / MIB

    fig, ax = plt.subplots(figsize=(7, 5))
    for w in workers:
        x, y = series("homerank", w, "seconds")
        fit = scaling["exponents"]["homerank"][f"workers={w}"]["exponent"]
        label = f"homerank, {w} worker(s)" + (f" (b={fit:.2f})" if fit is not None else "")
        ax.plot(x, y, "o-", label=label)
    for peer in PEERS:
        x, y = series(peer, fewest, "seconds")
        fit = scaling["exponents"][peer]["exponent"]
        ax.plot(x, y, "s--", label=peer + (f" (b={fit:.2f})" if fit is not None else ""))
    ax.set(xscale="log", yscale="log", xlabel="events", ylabel="seconds (median)",
           title="ETL time vs events (time ~ events^b)")
    ax.grid(True, which="both", alpha=0.3)
    written.append(_finish_plot(fig, ax, out / f"time_vs_events{tag}.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    for w in workers:
        x, y = series("homerank", w, "rss")
        ax.plot(x, y, "o-", label=f"homerank total, {w} worker(s)")
        if scaling["processes"]:
            x, y = series("homerank", w, "client")
            ax.plot(x, y, "^:", label=f"homerank client, {w} worker(s)")
    for peer in PEERS:
        x, y = series(peer, fewest, "rss")
        ax.plot(x, y, "s--", label=peer)
    ax.set(xscale="log", yscale="log", xlabel="events", ylabel="peak RSS (MiB)", title="ETL peak memory vs events")
    ax.grid(True, which="both", alpha=0.3)
    written.append(_finish_plot(fig, ax, out / f"memory_vs_events{tag}.png"))

    strong = scaling["strong_scaling"]
    if strong["points"]:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        xs = [p["workers"] for p in strong["points"]]
        ax.plot(xs, [p["speedup"] for p in strong["points"]], "o-", label="homerank")
        ax.plot(xs, [w / strong["baseline_workers"] for w in xs], "k:", label="ideal")
        ax.set(xlabel="workers", ylabel=f"speedup vs {strong['baseline_workers']} worker(s)", xticks=xs,
               title=f"Strong scaling at {strong['events']} events")
        ax.grid(True, alpha=0.3)
        written.append(_finish_plot(fig, ax, out / f"strong_scaling{tag}.png"))
    return written


def run_all(sizes: list[int], workers: list[int], *, processes: bool = False, threads_per_worker: int = 1,
            repeat: int | None = None, data_root: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    from bench.machine import machine_info

    started = time.perf_counter()
    out = Path(out)
    results, files = [], []
    grid = [(n, w) for n in sorted(sizes) for w in sorted(workers)]
    for step, (n, w) in enumerate(grid, 1):
        say(f"=== point {step}/{len(grid)}: {n} events, {w} worker(s) ===")
        result = etl_point(n, w, processes=processes, threads_per_worker=threads_per_worker, repeat=repeat,
                           data_root=data_root)
        path = out / f"{result_name(n, w, processes)}.json"
        check_edges(result, path)
        write_point(result, path)
        results.append(result)
        files.append(path.name)
    tag = "-processes" if processes else ""
    scaling = scaling_summary(results)
    keep = ("events", "workers", "seconds", "speedup_vs_pandas", "speedup_vs_polars", "client_peak_rss_bytes",
            "workers_peak_rss_bytes", "peak_rss_bytes", "edges", "repeat", "input_rows", "generation_seconds",
            "homerank_stage_seconds")
    scaling.update({
        "processes": processes,
        "threads_per_worker": threads_per_worker or None,
        "runs": [{**{k: r[k] for k in keep}, "file": f} for r, f in zip(results, files, strict=True)],
        "machine": machine_info(("polars", "pyarrow", "distributed", "psutil")),
        "total_seconds": time.perf_counter() - started,
    })
    scaling["plots"] = write_plots(scaling, out, tag)
    write_atomic(out / f"scaling{tag}.json", json.dumps(scaling, indent=2) + "\n")
    write_atomic(out / f"scaling{tag}.md", scaling_markdown(scaling))
    say(f"wrote {out / f'scaling{tag}.json'}, scaling{tag}.md and {', '.join(scaling['plots'])} "
        f"in {scaling['total_seconds']:.0f}s")
    return scaling
