"""Accuracy on a LightGCN-format split (default: Gowalla): homerank's recipe vs PyG's example recipe vs
implicit's ALS, same data, same machine, same evaluator.

1. Runs the documented command
       homerank run --input-format lightgcn --input DATA --out RUN --config preset:recipe  (bench/snapshot_run.py)
   (early stopping on a validation slice carved from train.txt; test.txt is used once, for metrics.json).
2. Builds our accuracy-vs-time curve from the run's snapshots (embeddings saved at each validation step by
   bench/snapshot_run.py, which runs the same pipeline as `homerank run` with a hook into training):
   each is scored on test afterwards, for the plot and the time-to-floor only — no choice depends on it.
3. Runs the peers within the same training-time budget, then writes
   bench/results/accuracy/<name>/{metrics.json, curves.json, summary.md, curves.png, run.log}.

    python bench/accuracy_bench.py [--data ../shared/datasets/gowalla] [--skip-peers]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine_info  # noqa: E402
from bench.snapshot_run import snapshot_folder  # noqa: E402
from homerank.gnn.linear_filter import LinearFilter  # noqa: E402
from homerank.gnn.metrics import evaluate_ranking  # noqa: E402
from homerank.gnn.scorer import Scorer, embedding_scorer  # noqa: E402
from homerank.jobs.artifacts import split_index  # noqa: E402
from homerank.jobs.config import load_config  # noqa: E402
from homerank.jobs.hygiene import quiet_library_warnings  # noqa: E402
from homerank.jobs.rundir import RunDir  # noqa: E402

FLOOR = {"recall@20": 0.1830, "ndcg@20": 0.1554}  # LightGCN paper, Gowalla
GOAL = {"recall@20": 0.1900, "ndcg@20": 0.1600}


def first_time(curve: list[dict], key: str, threshold: float) -> float | None:
    for point in curve:
        if point[key] >= threshold:
            return point["seconds"]
    return None


def first_time_past(curve: list[dict], bar: dict[str, float]) -> float | None:
    """Seconds of the first point of ``curve`` at or above ``bar`` on every metric of ``bar``."""
    return next((p["seconds"] for p in curve if all(p[key] >= value for key, value in bar.items())), None)


def our_curve(run: RunDir, edges: pd.DataFrame, num_users: int, num_items: int) -> list[dict]:
    known = split_index(edges, ["train", "valid"], num_users, num_items)  # all of train.txt is masked
    test = split_index(edges, "test", num_users, num_items)
    curve = []
    for path in sorted(snapshot_folder(run).glob("epoch_*.pt")):
        snap = torch.load(path, weights_only=True)
        metrics = evaluate_ranking(embedding_scorer(snap["users"], snap["items"]), test, known, [20])
        curve.append({"epoch": int(snap["epoch"]), "seconds": round(float(snap["elapsed"]), 2),
                      "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"]})
    return curve


def refit_alone_curve(run: RunDir, edges: pd.DataFrame, num_users: int, num_items: int,
                      seconds: float) -> list[dict]:
    """The refit LightGCN on its own (the run's final embeddings, no filter), scored on test. One point, at
    the end of both trainings."""
    final = Scorer.load(run.scorer)
    metrics = evaluate_ranking(embedding_scorer(final.user_embeddings, final.item_embeddings),
                               split_index(edges, "test", num_users, num_items),
                               split_index(edges, ["train", "valid"], num_users, num_items), [20])
    return [{"epoch": "refit", "seconds": round(seconds, 2), **metrics}]


def filter_alone_curve(run: RunDir, edges: pd.DataFrame, num_users: int, num_items: int) -> list[dict]:
    """The recipe's GF-CF filter on its own: fitted on all of train.txt (train + validation pairs) with the
    run's settings, timed, and scored on test. One point: (fit seconds, test metrics)."""
    settings = load_config(run.config).train.linear_filter
    known = edges[edges["split"] != "test"]
    started = time.perf_counter()
    linear = LinearFilter.fit_settings(known["user_index"].to_numpy(), known["item_index"].to_numpy(), num_users,
                                       num_items, settings)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate_ranking(linear.scorer(), split_index(edges, "test", num_users, num_items),
                               split_index(edges, ["train", "valid"], num_users, num_items), [20])
    print(f"GF-CF alone: fit {fit_seconds:.1f}s, test scored in {time.perf_counter() - started:.1f}s", flush=True)
    return [{"epoch": "closed form", "seconds": round(fit_seconds, 2), **metrics}]


def plot(curves: dict[str, list[dict]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("recall@20", "ndcg@20"), strict=True):
        for name, curve in curves.items():
            if curve:
                ax.plot([p["seconds"] for p in curve], [p[key] for p in curve], marker="o", ms=3, label=name)
        ax.axhline(FLOOR[key], color="grey", ls="--", lw=1, label="LightGCN paper")
        ax.axhline(GOAL[key], color="black", ls=":", lw=1, label="goal")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training seconds")
        ax.set_ylabel(f"test {key}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description="accuracy side by side on a LightGCN-format split")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "gowalla"))
    parser.add_argument("--name", default=None, help="results folder name (default: the data folder's name)")
    parser.add_argument("--config", default="preset:recipe",
                        help="YAML file or a preset shipped with homerank: preset:recipe (default), preset:minute")
    parser.add_argument("--run", default=None, help="run directory (default: runs/bench/<name>)")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--reuse-run", action="store_true", help="do not rerun homerank; use the existing run")
    parser.add_argument("--peer-budget", type=float, default=None, help="seconds (default: our training time)")
    args = parser.parse_args()
    quiet_library_warnings()  # as the homerank CLI does
    name = args.name or Path(args.data).name
    out = ROOT / "bench" / "results" / "accuracy" / name
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(Path(args.run) if args.run else ROOT / "runs" / "bench" / name)
    # `homerank run` plus the bench's snapshots (bench/snapshot_run.py): the same pipeline, in a process of its own
    command = [sys.executable, "-m", "bench.snapshot_run", "--input", args.data, "--out", str(run.root),
               "--config", args.config]
    print("$", " ".join(command), flush=True)
    if not args.reuse_run:
        if run.root.exists():  # a fresh run: its log then holds this run only (run directories append logs)
            shutil.rmtree(run.root)
        with open(out / "run.log", "w") as log_file:
            log_file.write("$ " + " ".join(command) + "\n")
            log_file.flush()
            subprocess.run(command, check=True, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    shutil.copy(run.log_file, out / "homerank.log")
    shutil.copy(run.config, out / "config.yaml")
    metrics = json.loads(run.metrics.read_text())
    edges = pd.read_parquet(run.edges)
    num_users, num_items = metrics["dataset"]["users"], metrics["dataset"]["items"]
    curves = {"homerank": our_curve(run, edges, num_users, num_items)}
    summary = json.loads(run.train_summary.read_text())
    if summary.get("linear_filter"):  # the final ensemble lands after training + the filter's fit and choice
        curves["homerank"].append({"epoch": "final (LightGCN + GF-CF)",
                                   "seconds": round(metrics["train_seconds"] + summary["linear_filter"]["seconds"], 2),
                                   "recall@20": metrics["test"]["recall@20"], "ndcg@20": metrics["test"]["ndcg@20"]})
    if summary.get("refit"):
        curves["homerank LightGCN alone, refit on train.txt"] = refit_alone_curve(run, edges, num_users, num_items,
                                                                                   metrics["train_seconds"])
    if summary.get("linear_filter"):
        curves["homerank GF-CF alone (no training)"] = filter_alone_curve(run, edges, num_users, num_items)
    budget = args.peer_budget or max(60.0, metrics["train_seconds"])
    if not args.skip_peers:
        train = edges[edges["split"] != "test"]  # peers train on all of train.txt (no validation needed)
        users = torch.from_numpy(train["user_index"].to_numpy().copy())
        items = torch.from_numpy(train["item_index"].to_numpy().copy())
        full_train = split_index(edges.assign(split=edges["split"].where(edges["split"] == "test", "train")),
                                 "train", num_users, num_items)
        test = split_index(edges, "test", num_users, num_items)
        try:
            from bench.peers.implicit_als import run_implicit_als

            curves["implicit ALS (256 f, alpha 20)"] = run_implicit_als(users.numpy(), items.numpy(), num_users,
                                                                         num_items, test, full_train)
        except ImportError as exc:
            print(f"skip implicit: {exc}")
        from bench.peers.pyg_example import run_pyg_example

        curves["PyG examples/lightgcn.py recipe"] = run_pyg_example(users, items, num_users, num_items, test,
                                                                    full_train, budget)
    ours = curves["homerank"]
    time_to_floor = first_time(ours, "recall@20", FLOOR["recall@20"])
    both = first_time_past(ours, FLOOR)
    als = next((curve for peer, curve in curves.items() if peer.startswith("implicit ALS")), None)
    als_best = {key: max(p[key] for p in als) for key in FLOOR} if als else None  # its best, on either metric
    peers_floor = {peer: first_time(curve, "recall@20", FLOOR["recall@20"]) for peer, curve in curves.items()
                   if peer != "homerank"}
    result = {
        **metrics,
        "time_to_floor_seconds": time_to_floor,
        "time_to_floor_both_metrics_seconds": both,
        "floor": FLOOR,
        "goal": GOAL,
        "goal_met": metrics["test"]["recall@20"] >= GOAL["recall@20"] and metrics["test"]["ndcg@20"] >= GOAL["ndcg@20"],
        "peers_time_to_floor_seconds": peers_floor,
        # when each of our curves first beats ALS's best test recall@20 and ndcg@20 (both at once)
        "als_best": als_best,
        "time_to_beat_als_seconds": first_time_past(ours, als_best) if als_best else None,
        "time_to_beat_als_seconds_by_curve": {name: first_time_past(curve, als_best) for name, curve in curves.items()
                                              if name.startswith("homerank")} if als_best else None,
        "peer_budget_seconds": budget if not args.skip_peers else None,
        "command": " ".join(command),
        "machine": machine_info(("implicit", "matplotlib")),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "curves.json").write_text(json.dumps(curves, indent=2) + "\n")
    plot(curves, out / "curves.png", f"{name}: test metric vs training time ({result['machine']['cpu_count']} CPU cores"
                                     f"{', ' + result['machine']['cuda'] if result['machine']['cuda'] else ''})")
    lines = [f"# Accuracy on {name}", "", f"Command: `{result['command']}`", "",
             "| method | best test recall@20 | best test ndcg@20 | final seconds | seconds to recall@20 ≥ 0.1830 |",
             "|---|---|---|---|---|"]
    for peer, curve in curves.items():
        if not curve:
            continue
        final = curve[-1]
        best = max(curve, key=lambda p: p["recall@20"])
        reach = first_time(curve, "recall@20", FLOOR["recall@20"])
        lines.append(f"| {peer} | {best['recall@20']:.4f} | {best['ndcg@20']:.4f} | {final['seconds']:.0f} | "
                     f"{'—' if reach is None else f'{reach:.0f}'} |")
    if als_best:
        lines += ["", f"Beats implicit ALS's best ({als_best['recall@20']:.4f} / {als_best['ndcg@20']:.4f}) on both "
                      f"metrics after: " + ", ".join(f"{name} {'never' if t is None else f'{t:.0f} s'}" for name, t
                                                      in result["time_to_beat_als_seconds_by_curve"].items()) + "."]
    lines += ["", f"homerank final (model chosen on validation, test read once): recall@20 "
                  f"{metrics['test']['recall@20']:.4f}, ndcg@20 {metrics['test']['ndcg@20']:.4f}, "
                  f"{metrics['train_seconds']:.0f} s training, {metrics['epochs']} epochs, device {metrics['device']}.",
              "", "The homerank curve scores the snapshots taken at each validation step on test after training; "
                  "peers' best rows are over their test curve (an optimistic view of them).",
              "", f"Machine: `{json.dumps(result['machine'])}`"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
