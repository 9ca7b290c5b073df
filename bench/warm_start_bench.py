"""The feedback loop's warm start against a cold retrain, on the demo-sized generated log.

    python -m bench warm-start [--events 1e6] [--users N] [--items N] [--seed S] [--repeat R] [--data DIR]
                               [--json FILE] [--set section.key=value ...]

Protocol (bench/README.md, "Warm start"):

1. **Served run.** The generator writes the demo's log (``--events``, 20,000 users and 10,000 items at 1e6,
   searches in 15% of the sessions, seed 42) and ``homerank run`` makes the *previous* run on it with the default
   config (the catalogue set), homepage and impressions included. It is reused while its log and config match.
2. **Feedback.** ``homerank simulate-feedback --run PREVIOUS --seed S`` draws the shoppers' clicks, carts and
   purchases on that homepage from the generator's latent tastes (`homerank.engine.synthetic_feedback`).
3. **Cold retrain vs warm start**, each a ``homerank run`` process on the same two logs (the previous log and the
   feedback), the same config and seed: *cold* from scratch; *warm* with ``--warm-start PREVIOUS`` (the id maps
   extended, layer 0 from the previous model, at most ``warm_start.epochs`` epochs). Both make the same temporal
   split (the warm ETL splits with the cold ETL's indices), so their test metrics compare on the same test edges.
   With ``--repeat R`` they alternate R times (cold, warm, cold, warm, ...) and the medians are reported.
4. **Reported:** each run's wall seconds, seconds per stage (``logs/timings.json``), training seconds and epochs,
   best validation NDCG@20, test Recall@20 and NDCG@20 (the evaluate stage: every test user, full ranking); the
   warm run's seconds to reach the cold run's best validation NDCG@20 (from the epoch history, None if it never
   does) and the reverse; the savings ``1 - warm / cold`` in training and pipeline seconds.

The machine is shared with other jobs: the seconds are upper bounds, and only a run's own process is timed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import machine_info
from homerank.engine.synthetic import generate, read_spec
from homerank.engine.synthetic_model import SyntheticSpec

DEFAULT_DATA = Path("runs/bench-data/warm_start")
DEFAULT_JSON = Path("bench/results/warm_start/summary.json")
SEARCH_SHARE = 0.15  # the demo's log (homerank demo)
METRIC = "ndcg@20"


def say(text: str) -> None:
    print(f"warm-start: {text}", flush=True)


def homerank(*arguments: str, log: Path) -> float:
    """``python -m homerank ARGUMENTS`` in its own process (output to ``log``); its wall seconds. A failure raises
    with the log's tail."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call([sys.executable, "-m", "homerank", *arguments], stdout=handle,
                               stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"homerank {' '.join(arguments)} exited {code}:\n{tail}")
    return seconds


def make_log(data: Path, spec: SyntheticSpec) -> Path:
    """The generated log under ``data/log``, reused while its catalogue records the same spec."""
    folder = data / "log"
    if not ((folder / "events").is_dir() and read_spec(folder / "items.parquet") == spec):
        say(f"generating {spec.events} events into {folder}")
        generate(folder, spec, workers=1)
    return folder


def previous_run(data: Path, log: Path, settings: list[str]) -> Path:
    """The served run (``data/previous``), reused while its marker says the same log and settings."""
    run = data / "previous"
    marker = run / "bench_marker.json"
    wanted = {"spec": json.loads(json.dumps(read_spec(log / "items.parquet").__dict__)), "settings": settings}
    if marker.is_file() and json.loads(marker.read_text()) == wanted and (run / "impressions" / "_SUCCESS").exists():
        say(f"reusing the served run {run}")
        return run
    say(f"the served run -> {run}")
    seconds = homerank("run", "--input", str(log / "events"), "--out", str(run), "--quiet",
                       *_sets(log, settings), log=data / "previous.log")
    marker.write_text(json.dumps(wanted) + "\n")
    say(f"served run done in {seconds:.0f} s")
    return run


def _sets(log: Path, settings: list[str]) -> list[str]:
    # test metrics over every test user (not the evaluate stage's sample beyond evaluate.test_users): cold and warm
    # runs compare exact figures
    out = ["--set", f"ingest.catalogue={log / 'items.parquet'}", "--set", "evaluate.test_users=null"]
    for setting in settings:
        out += ["--set", setting]
    return out


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def one_run(kind: str, number: int, data: Path, log: Path, feedback: Path, previous: Path,
            settings: list[str], reuse: bool = False) -> dict[str, Any]:
    """One cold or warm ``homerank run`` on the log + feedback; its figures (also written to the run's
    ``bench_run.json``, which ``reuse`` reads back instead of running again)."""
    out = data / f"{kind}-{number}"
    record = out / "bench_run.json"
    if reuse and record.is_file():  # the figures a finished run of this bench recorded (its own seconds)
        say(f"{kind} run {number}: reusing {out}")
        return _read(record)
    arguments = ["run", "--input", str(log / "events"), "--input", str(feedback / "events"), "--out", str(out),
                 "--quiet", *_sets(log, settings)]
    if kind == "warm":
        arguments += ["--warm-start", str(previous)]
    say(f"{kind} run {number} -> {out}")
    wall = homerank(*arguments, log=data / f"{kind}-{number}.log")
    metrics, train = _read(out / "metrics.json"), _read(out / "train" / "summary.json")
    timings = _read(out / "logs" / "timings.json")
    curve = [(h["elapsed"], h["valid"][METRIC], h["epoch"]) for h in train["history"]
             if METRIC in (h.get("valid") or {})]
    figures = {"wall_seconds": round(wall, 1), "stage_seconds": timings,
               "train_seconds": train["train_seconds"], "epochs": train["epochs"], "best_epoch": train["best_epoch"],
               "stopped_because": train["stopped_because"], f"best_valid_{METRIC}": train["best_valid"],
               "test_recall@20": metrics["test"]["recall@20"], "test_ndcg@20": metrics["test"]["ndcg@20"],
               "curve": curve}
    record.write_text(json.dumps(figures) + "\n")
    say(f"{kind} run {number}: {wall:.0f} s wall, training {train['train_seconds']:.0f} s ({train['epochs']} "
        f"epochs), test recall@20 {figures['test_recall@20']:.4f} ndcg@20 {figures['test_ndcg@20']:.4f}")
    return figures


def time_to_reach(curve: list[Any], target: float) -> float | None:
    """Training seconds until the validation metric first reaches ``target`` (None: never); ``curve``: (training
    seconds, metric[, epoch]) per evaluation."""
    return next((round(point[0], 1) for point in curve if point[1] >= target), None)


def epochs_to_reach(curve: list[Any], target: float) -> int | None:
    """The first epoch whose validation metric reaches ``target`` (None: never)."""
    return next((int(point[2]) for point in curve if point[1] >= target), None)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def run_warm_start_bench(path: Path, events: int = 1_000_000, users: int | None = None, items: int | None = None,
                         seed: int = 42, repeat: int = 1, data: Path = DEFAULT_DATA,
                         settings: list[str] | None = None, reuse: bool = False) -> dict[str, Any]:
    """The protocol of the module docstring; writes ``path`` (JSON) and the same with ``.md``. ``reuse``: runs that
    this bench finished before (their ``bench_run.json``) are read back, not run again."""
    settings = list(settings or [])
    data.mkdir(parents=True, exist_ok=True)
    spec = SyntheticSpec(users=users or max(1, events // 50), items=items or max(1, events // 100), events=events,
                         seed=42, search_share=SEARCH_SHARE)
    started = time.perf_counter()
    log = make_log(data, spec)
    previous = previous_run(data, log, settings)
    feedback = data / "feedback"
    homerank("simulate-feedback", "--run", str(previous), "--out", str(feedback), "--seed", str(seed), "--quiet",
             log=data / "feedback.log")
    simulated = _read(feedback / "summary.json")
    say(f"feedback: {simulated['events']} events ({simulated['click']} clicks) on {simulated['impressions']} "
        f"impressions")
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    for number in range(1, repeat + 1):
        for kind in ("cold", "warm"):
            runs[kind].append(one_run(kind, number, data, log, feedback, previous, settings, reuse))
    warm_etl = _read(data / "warm-1" / "etl" / "stats.json")
    cold, warm = runs["cold"], runs["warm"]
    summary: dict[str, Any] = {
        "log": {"events": spec.events, "users": spec.users, "items": spec.items, "search_share": SEARCH_SHARE,
                "generator_seed": spec.seed},
        "settings": settings,
        "feedback": {key: simulated[key] for key in ("impressions", "users", "click", "cart", "purchase", "ctr",
                                                     "events", "seed")},
        "id_maps": warm_etl["warm_start"],
        "feedback_stats": warm_etl.get("feedback"),
        "repeat": repeat,
        "cold": {key: _median(cold, key) for key in ("wall_seconds", "train_seconds", "epochs",
                                                     f"best_valid_{METRIC}", "test_recall@20", "test_ndcg@20")},
        "warm": {key: _median(warm, key) for key in ("wall_seconds", "train_seconds", "epochs",
                                                     f"best_valid_{METRIC}", "test_recall@20", "test_ndcg@20")},
        "runs": runs,
    }
    best_cold = max(run[f"best_valid_{METRIC}"] for run in cold)
    best_warm = max(run[f"best_valid_{METRIC}"] for run in warm)
    summary["warm"]["seconds_to_cold_best_valid"] = time_to_reach(warm[0]["curve"], best_cold)
    summary["cold"]["seconds_to_warm_best_valid"] = time_to_reach(cold[0]["curve"], best_warm)
    # "equal accuracy" within 1%: the first epoch within 1% of the other run's best validation NDCG@20
    summary["warm"]["epochs_to_99pct_cold_best_valid"] = epochs_to_reach(warm[0]["curve"], 0.99 * best_cold)
    summary["cold"]["epochs_to_99pct_warm_best_valid"] = epochs_to_reach(cold[0]["curve"], 0.99 * best_warm)
    summary["warm"]["seconds_to_99pct_cold_best_valid"] = time_to_reach(warm[0]["curve"], 0.99 * best_cold)
    summary["cold"]["seconds_to_99pct_warm_best_valid"] = time_to_reach(cold[0]["curve"], 0.99 * best_warm)
    summary["savings"] = {
        "train_seconds": round(1 - summary["warm"]["train_seconds"] / summary["cold"]["train_seconds"], 3),
        "wall_seconds": round(1 - summary["warm"]["wall_seconds"] / summary["cold"]["wall_seconds"], 3),
        "test_recall@20_difference": round(summary["warm"]["test_recall@20"] - summary["cold"]["test_recall@20"], 4),
        "test_ndcg@20_difference": round(summary["warm"]["test_ndcg@20"] - summary["cold"]["test_ndcg@20"], 4),
    }
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["machine"] = machine_info()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    cold, warm, saved = summary["cold"], summary["warm"], summary["savings"]
    log, feedback, maps = summary["log"], summary["feedback"], summary["id_maps"]

    def row(name: str, key: str, fmt: str) -> str:
        return f"| {name} | {format(cold[key], fmt)} | {format(warm[key], fmt)} |"

    lines = [
        "# Warm start vs cold retrain (the feedback loop)", "",
        f"Log: {log['events']:,} generated events, {log['users']:,} users, {log['items']:,} items (searches in "
        f"{log['search_share']:.0%} of the sessions, generator seed {log['generator_seed']}); the served run's "
        f"homepage got {feedback['events']:,} simulated feedback events ({feedback['click']:,} clicks, "
        f"{feedback['cart']:,} carts, {feedback['purchase']:,} purchases) on {feedback['impressions']:,} impressions "
        f"(CTR {feedback['ctr']:.4f}, seed {feedback['seed']}). Both runs read the log and the feedback; the warm "
        f"run kept {maps['users']['kept']:,} users and {maps['items']['kept']:,} items of the served run's id maps "
        f"and appended {maps['users']['new']:,} users and {maps['items']['new']:,} items. Settings: "
        f"{summary['settings'] or 'defaults'}; medians of {summary['repeat']} run(s) each.", "",
        "| | cold retrain | warm start |", "|---|---|---|",
        row("homerank run, wall seconds", "wall_seconds", ".1f"),
        row("training seconds", "train_seconds", ".1f"),
        row("epochs", "epochs", ".0f"),
        row(f"best validation {METRIC}", f"best_valid_{METRIC}", ".4f"),
        row("test Recall@20", "test_recall@20", ".4f"),
        row("test NDCG@20", "test_ndcg@20", ".4f"), "",
        f"Savings of the warm start: {saved['train_seconds']:.0%} of the training seconds, {saved['wall_seconds']:.0%} "
        f"of the run's wall seconds; test Recall@20 {saved['test_recall@20_difference']:+.4f}, NDCG@20 "
        f"{saved['test_ndcg@20_difference']:+.4f} (warm - cold). The warm run reached the cold run's best "
        f"validation {METRIC} after {warm['seconds_to_cold_best_valid']} s of training (None: never); the cold run "
        f"reached the warm run's best after {cold['seconds_to_warm_best_valid']} s. Within 1% of the other's best: "
        f"the warm run at epoch {warm.get('epochs_to_99pct_cold_best_valid')} "
        f"({warm.get('seconds_to_99pct_cold_best_valid')} s), the cold run at epoch "
        f"{cold.get('epochs_to_99pct_warm_best_valid')} ({cold.get('seconds_to_99pct_warm_best_valid')} s).", "",
        "Seconds per stage: " + "; ".join(
            f"{kind} {run['stage_seconds']}" for kind in ("cold", "warm") for run in summary["runs"][kind][:1]), "",
        f"Machine: `{json.dumps(summary['machine'])}`", "",
    ]
    return "\n".join(lines)
