"""Training schedules side by side on one run's ETL output: epoch seconds, validation NDCG@20 and the time to
reach it, for today's per-step full propagation against larger batches with fewer propagations per epoch, and
for data-parallel ranks (``train.world_size``).

    python -m bench training --run RUN [--variant NAME:key=value,key=value ...] [--budget S] [--json FILE]

RUN is a run directory whose etl and graph stages are done (``homerank etl`` + ``homerank graph``). Every
variant trains from the same seed on the same graph with early stopping on validation NDCG@20, within
``--budget`` seconds of training (evaluations included). Results: a JSON with every variant's history, a
Markdown table beside it, and machine info.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.machine import machine_info
from homerank.engine import schema
from homerank.engine.split import SPLIT
from homerank.gnn.config import EvalConfig, TrainConfig
from homerank.gnn.train import TrainData, train_lightgcn
from homerank.jobs.artifacts import load_graph, training_data
from homerank.jobs.config import parse_set_option
from homerank.jobs.rundir import RunDir

# name -> train.* overrides; "today" is TrainConfig's default (bpr, 16,384 pairs per step, one propagation each)
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "today: bpr, 16384 pairs/step": {},
    "bpr, 8 steps/epoch": {"steps_per_epoch": 8, "lr": 0.05},
    "softmax, 8 steps/epoch": {"loss": "softmax", "negatives": 4096, "temperature": 0.1, "l2": 0.0, "lr": 0.05,
                               "steps_per_epoch": 8},
    "softmax, 4 steps/epoch": {"loss": "softmax", "negatives": 4096, "temperature": 0.1, "l2": 0.0, "lr": 0.05,
                               "steps_per_epoch": 4},
}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` (train.* keys, YAML values; the last colon ends the name) -> (NAME, overrides)."""
    name, _, settings = text.rpartition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, settings.split(",")):
        key, value = parse_set_option(f"train.{item}")
        overrides[key.removeprefix("train.")] = value
    return name.strip(), overrides


def load_training_data(run: RunDir) -> tuple[TrainData, dict[str, int]]:
    """The run's training pairs, graph and validation lists, as the train stage builds them."""
    graph = load_graph(run)
    edges = pd.read_parquet(run.edges, columns=[schema.USER_INDEX, schema.ITEM_INDEX, SPLIT])
    data = training_data(graph, edges)
    sizes = {"users": graph.num_users, "items": graph.num_items, "train_pairs": data.train_users.numel(),
             "valid_pairs": int((edges[SPLIT] == "valid").sum())}
    return data, sizes


def run_variant(data: TrainData, overrides: dict[str, Any], budget_s: float, seed: int = 0) -> dict[str, Any]:
    """Train one variant within ``budget_s``; epoch seconds exclude validation scoring."""
    base = {"epochs": 200, "eval_every": 1, "patience": 5, "time_budget_s": budget_s}
    config = TrainConfig(**{**base, **overrides}).for_pairs(data.train_users.numel())  # the schedule it trains
    started = time.perf_counter()
    result = train_lightgcn(data, config, EvalConfig(ks=[20]), seed, torch.device("cpu"), show_progress=False)
    wall = time.perf_counter() - started
    history = [{"epoch": h["epoch"], "loss": h["loss"], "seconds": h["seconds"], "elapsed": h["elapsed"],
                "valid_ndcg@20": h.get("valid", {}).get("ndcg@20"), "valid_recall@20": h.get("valid", {}).get(
                    "recall@20"), **({"all_reduce_bytes_per_step": h["all_reduce_bytes_per_step"]}
                                     if "all_reduce_bytes_per_step" in h else {})} for h in result.history]
    best = max((h for h in history if h["valid_ndcg@20"] is not None), key=lambda h: h["valid_ndcg@20"])
    return {"overrides": overrides, "pairs_per_step": config.pairs_per_step(data.train_users.numel()),
            "lr": config.lr,
            "epochs": result.epochs, "stopped_because": result.stopped_because,
            "epoch_seconds_median": statistics.median(h["seconds"] for h in history),
            "best_valid_ndcg@20": best["valid_ndcg@20"], "best_valid_recall@20": best["valid_recall@20"],
            "best_epoch": best["epoch"], "seconds_to_best": best["elapsed"], "wall_seconds": round(wall, 2),
            "history": history}


def time_to_reach(variant: dict[str, Any], target: float) -> float | None:
    """Training seconds until validation NDCG@20 first reached ``target`` (None: never)."""
    for record in variant["history"]:
        if record["valid_ndcg@20"] is not None and record["valid_ndcg@20"] >= target:
            return record["elapsed"]
    return None


def markdown(result: dict[str, Any]) -> str:
    sizes = result["data"]
    lines = [f"# Training schedules on `{result['run']}`", "",
             f"{sizes['users']:,} users, {sizes['items']:,} items, {sizes['train_pairs']:,} training pairs; "
             f"budget {result['budget_s']:.0f} s per variant; {result['machine']['cpu_count']} CPU cores, "
             f"{result['machine']['when']}.", "",
             "| variant | pairs/step | epoch s (median) | epochs | best valid NDCG@20 | s to best | "
             f"s to reach {result['reference']}'s best |",
             "|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        reach = v.get("seconds_to_reference_best")
        lines.append(f"| {name} | {v['pairs_per_step']:,} | {v['epoch_seconds_median']:.2f} | {v['epochs']} | "
                     f"{v['best_valid_ndcg@20']:.4f} | {v['seconds_to_best']:.1f} | "
                     f"{'never' if reach is None else f'{reach:.1f}'} |")
    return "\n".join(lines) + "\n"


def run_training_bench(run_dir: Path, variants: dict[str, dict[str, Any]], budget_s: float, json_path: Path
                       ) -> dict[str, Any]:
    data, sizes = load_training_data(RunDir(run_dir))
    result: dict[str, Any] = {"run": str(run_dir), "data": sizes, "budget_s": budget_s,
                              "machine": machine_info(), "variants": {}}
    for name, overrides in variants.items():
        print(f"training bench: {name} {overrides}", flush=True)
        result["variants"][name] = run_variant(data, overrides, budget_s)
        v = result["variants"][name]
        print(f"  epoch {v['epoch_seconds_median']:.2f}s, best valid ndcg@20 {v['best_valid_ndcg@20']:.4f} "
              f"at {v['seconds_to_best']:.1f}s (epoch {v['best_epoch']})", flush=True)
    reference = next(iter(variants))
    result["reference"] = reference
    target = result["variants"][reference]["best_valid_ndcg@20"]
    for v in result["variants"].values():
        v["seconds_to_reference_best"] = time_to_reach(v, target)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    json_path.with_suffix(".md").write_text(markdown(result))
    return result
