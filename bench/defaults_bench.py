"""Which defaults win on a behaviour log: homerank's default training, the minute preset's training and an ALS tuned
on validation (implicit), on one generated log, the same split, the same evaluator, in one run.

    python -m bench defaults [--events 1e6] [--json FILE] [--als-factors 32,64,128,256] [--als-alpha 1,10,40]
                             [--als-regularization 0.01,0.1]

Protocol (bench/README.md, "Which defaults win"):

1. **Log.** ``bench.etl_suite.ensure_log`` (``runs/bench-data/events-N/``, generated once and reused; users N/50,
   items N/200, with its catalogue).
2. **One split.** ``etl`` and ``graph`` with the default config (in process, ``device cpu``): the k-core and every
   user's history split in time into train / valid / test (`homerank.engine.split`).
3. **homerank.** Each variant is trained on a copy of that run (``train`` then ``evaluate``, the product's stages):
   ``default`` is the train section as shipped (``JobConfig()``: the size-dependent schedule, early stopping on
   validation NDCG@20); ``minute`` takes the ``train`` and ``evaluate`` sections of ``preset:minute`` (16 epochs of
   sampled softmax and the GF-CF filter blended on validation) and nothing else (the preset's ``ingest`` and
   ``split`` are for LightGCN-format files). Test metrics are the evaluate stage's ``metrics.json``: every test user,
   train and validation pairs masked.
4. **ALS.** implicit's ``AlternatingLeastSquares`` (15 iterations, confidence 1 + alpha * r on binary r): every
   (factors, alpha, regularization) of the grid (24 by default) is fitted on the training pairs and scored on
   validation (NDCG@20, training pairs masked); the best is refitted on train + validation pairs and scored on test
   like homerank (train and validation masked, `homerank.gnn.metrics.evaluate_ranking`, the evaluate stage's
   function).

Seconds: each variant's ``train`` stage wall clock (its validation scoring included) and ``evaluate``; ALS: the
grid's fits and validation scoring together, and the final fit. Writes ``bench/results/defaults/events-N.json`` and
``.md``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.etl_suite import ensure_log, say
from bench.machine import machine_info
from homerank.engine.backend import resolve_backend
from homerank.engine.matrices import csr_from_pairs
from homerank.engine.split import SPLIT
from homerank.gnn.metrics import evaluate_ranking
from homerank.gnn.scorer import embedding_scorer
from homerank.jobs.artifacts import read_edges, split_index
from homerank.jobs.config import JobConfig, load_config
from homerank.jobs.pipeline import run_stage
from homerank.jobs.rundir import RunDir, read_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "runs" / "bench-data"
RESULTS = ROOT / "bench" / "results" / "defaults"
KEYS = ("recall@20", "ndcg@20")
ALS_ITERATIONS = 15


def _metrics(values: dict[str, float]) -> dict[str, float]:
    return {key: round(float(values[key]), 4) for key in KEYS}


def variant_configs(catalogue: Path) -> dict[str, JobConfig]:
    """The homerank variants: the shipped defaults, the minute preset's train + evaluate sections, and the two
    halves of the difference (which part of the preset's recipe carries its accuracy): the preset without its
    GF-CF filter, and the defaults with the preset's filter."""
    base = {"device": "cpu", "seed": 0, "ingest": {"catalogue": str(catalogue)}, "cluster": {"n_workers": 2}}
    minute = load_config("preset:minute")
    shipped = JobConfig(**base)
    minute_train = minute.train.model_dump()
    no_filter = {**minute_train, "linear_filter": {**minute_train["linear_filter"], "enabled": False}}
    return {"default": shipped,
            "minute": JobConfig(**base, train=minute_train, evaluate=minute.evaluate.model_dump()),
            "minute_without_filter": JobConfig(**base, train=no_filter, evaluate=minute.evaluate.model_dump()),
            "default_with_filter": JobConfig(**base, train={**shipped.train.model_dump(),
                                                            "linear_filter": minute_train["linear_filter"]},
                                             evaluate=minute.evaluate.model_dump())}


def train_variant(name: str, config: JobConfig, split_run: RunDir, folder: Path) -> dict[str, Any]:
    """Train and evaluate one variant on a copy of ``split_run`` (its etl and graph outputs)."""
    run = RunDir(folder / name)
    # every test user, as ALS is scored (not the evaluate stage's sample beyond evaluate.test_users)
    config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"test_users": None})})
    shutil.rmtree(run.root, ignore_errors=True)
    shutil.copytree(split_run.root, run.root)
    backend = resolve_backend("cpu")
    tick = time.perf_counter()
    summary = run_stage("train", run, config, backend, show_progress=False)
    train_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    run_stage("evaluate", run, config, backend, show_progress=False)
    evaluate_seconds = time.perf_counter() - tick
    metrics = read_json(run.metrics)
    out = {"test": _metrics(metrics["test"]), "train_seconds": round(train_seconds, 1),
           "evaluate_seconds": round(evaluate_seconds, 1), "epochs": summary.get("epochs"),
           "best_epoch": summary.get("best_epoch"), "stopped_because": summary.get("stopped_because"),
           "schedule": summary.get("schedule"), "linear_filter": config.train.linear_filter.enabled}
    say(f"defaults: {name}: test {out['test']} (train {out['train_seconds']} s, {out['epochs']} epochs)")
    return out


def _fit_als(matrix: Any, factors: int, alpha: float, regularization: float) -> tuple[torch.Tensor, torch.Tensor]:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                    iterations=ALS_ITERATIONS, random_state=0)
    with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads on top oversubscribe
        model.fit(matrix, show_progress=False)
    return torch.from_numpy(np.asarray(model.user_factors)), torch.from_numpy(np.asarray(model.item_factors))


def tuned_als(run: RunDir, grid: list[tuple[int, float, float]]) -> dict[str, Any]:
    """ALS chosen on validation NDCG@20 over ``grid`` (factors, alpha, regularization), refitted on train +
    validation, scored on test with train + validation masked."""
    edges = read_edges(run, ["user_index", "item_index", SPLIT])
    num_users = len(pd.read_parquet(run.user_index))
    num_items = len(pd.read_parquet(run.item_index))
    shape = (num_users, num_items)
    users, items = edges["user_index"].to_numpy(), edges["item_index"].to_numpy()
    split = edges[SPLIT].to_numpy()
    train = split == "train"
    known_train = split_index(edges, "train", num_users, num_items)
    valid = split_index(edges, "valid", num_users, num_items)
    tried = []
    tick = time.perf_counter()
    train_matrix = csr_from_pairs(users[train], items[train], *shape, binary=True)  # one matrix for the whole grid
    for factors, alpha, regularization in grid:
        user_factors, item_factors = _fit_als(train_matrix, factors, alpha, regularization)
        found = evaluate_ranking(embedding_scorer(user_factors, item_factors), valid, known_train, [20])
        tried.append({"factors": factors, "alpha": alpha, "regularization": regularization,
                      "valid_ndcg@20": round(float(found["ndcg@20"]), 4)})
        say(f"defaults: als {tried[-1]}")
    grid_seconds = time.perf_counter() - tick
    best = max(tried, key=lambda t: t["valid_ndcg@20"])
    known = split_index(edges, ["train", "valid"], num_users, num_items)
    test = split_index(edges, "test", num_users, num_items)
    seen = train | (split == "valid")
    tick = time.perf_counter()
    known_matrix = csr_from_pairs(users[seen], items[seen], *shape, binary=True)
    user_factors, item_factors = _fit_als(known_matrix, best["factors"], best["alpha"],
                                          best["regularization"])
    fit_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    metrics = evaluate_ranking(embedding_scorer(user_factors, item_factors), test, known, [20])
    out = {"test": _metrics(metrics), "chosen": best, "grid": tried, "grid_seconds": round(grid_seconds, 1),
           "final_fit_seconds": round(fit_seconds, 1), "test_seconds": round(time.perf_counter() - tick, 1),
           "iterations": ALS_ITERATIONS}
    say(f"defaults: als chosen {best}: test {out['test']} (grid {out['grid_seconds']} s)")
    return out


def run_defaults_bench(events: int = 1_000_000, *, json_path: Path | None = None, data: Path = DEFAULT_DATA,
                       als_factors: tuple[int, ...] = (32, 64, 128, 256),
                       als_alpha: tuple[float, ...] = (1.0, 10.0, 40.0),
                       als_regularization: tuple[float, ...] = (0.01, 0.1)) -> dict[str, Any]:
    """Generate (or reuse) the log, split it once, train the variants and the tuned ALS; write JSON and Markdown."""
    json_path = json_path or RESULTS / f"events-{events}.json"
    log_info = ensure_log(data, events)
    folder = data / "defaults" / f"events-{events}"
    catalogue = data / f"events-{events}" / "items.parquet"
    configs = variant_configs(catalogue)
    split_run = RunDir(folder / "split")
    shutil.rmtree(split_run.root, ignore_errors=True)
    backend = resolve_backend("cpu")
    tick = time.perf_counter()
    for stage in ("etl", "graph"):
        run_stage(stage, split_run, configs["default"], backend, log_info["events_dir"] if stage == "etl" else None,
                  show_progress=False)
    split_seconds = time.perf_counter() - tick
    stats = read_json(split_run.etl_stats)
    say(f"defaults: etl + graph {split_seconds:.1f}s")
    results: dict[str, Any] = {name: train_variant(name, config, split_run, folder) for name, config in configs.items()}
    grid = [(f, a, r) for f in als_factors for a in als_alpha for r in als_regularization]
    results["als"] = tuned_als(split_run, grid)
    best_peer = results["als"]["test"]["ndcg@20"]
    summary = {
        "events": events,
        "rows": log_info["rows"],
        "test": {name: values["test"] for name, values in results.items()},
        "seconds": {name: values.get("train_seconds", values.get("grid_seconds")) for name, values in results.items()},
        "default_beats_als": {key: results["default"]["test"][key] > results["als"]["test"][key] for key in KEYS},
        "minute_beats_als": {key: results["minute"]["test"][key] > results["als"]["test"][key] for key in KEYS},
        "ndcg@20_vs_als": {name: round(results[name]["test"]["ndcg@20"] / best_peer, 3) for name in configs},
        "detail": results,
        "split": {key: stats.get(key) for key in ("users", "items", "edges", "split") if key in stats},
        "split_seconds": round(split_seconds, 1),
        "machine": machine_info(("implicit", "scipy", "pyarrow")),
        "log": {key: log_info[key] for key in ("spec", "rows", "input_bytes")},
        "run": str(folder),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown(summary))
    say(f"defaults: wrote {json_path} and {json_path.with_suffix('.md').name}")
    return summary


def markdown(summary: dict[str, Any]) -> str:
    detail = summary["detail"]
    lines = [f"# Which defaults win: {summary['events']} generated events ({summary['rows']} rows)", "",
             "One split (the default ETL: k-core, per-user temporal train / valid / test); test metrics over every "
             "test user with train + valid masked (the evaluate stage's). Seconds: the train stage's wall clock "
             "(validation scoring included); ALS: its whole validation grid. Evaluate s: scoring every test user "
             "(the evaluate stage; ALS: the same function), the cost each later scoring stage (rank, homepage) pays "
             "again.", "",
             "| model | test Recall@20 | test NDCG@20 | train s | evaluate s | NDCG@20 vs ALS |",
             "|---|---|---|---|---|---|"]
    for name in detail:
        test = detail[name]["test"]
        ratio = summary["ndcg@20_vs_als"].get(name, 1.0)
        evaluate = detail[name].get("evaluate_seconds", detail[name].get("test_seconds", "n/a"))
        lines.append(f"| {name} | {test['recall@20']:.4f} | {test['ndcg@20']:.4f} | {summary['seconds'][name]} | "
                     f"{evaluate} | {ratio:.3f} |")
    als = detail["als"]
    lines += ["", f"ALS chosen on validation: {als['chosen']} ({als['iterations']} iterations; grid of "
                  f"{len(als['grid'])}, {als['grid_seconds']} s; final fit {als['final_fit_seconds']} s).",
              f"default: {detail['default']['epochs']} epochs (best {detail['default']['best_epoch']}, "
              f"{detail['default']['stopped_because']}), schedule {detail['default']['schedule']}; minute: "
              f"{detail['minute']['epochs']} epochs, linear filter {detail['minute']['linear_filter']}.", "",
              f"Machine: `{json.dumps(summary['machine'])}`", ""]
    return "\n".join(lines)
