"""Cold items: Recall@20 on catalogue items that training never saw, homerank with content features against
popularity within category, random, and today's mean vector of the item's category and price band.

    python -m bench cold-start [--events 1e6] [--users N] [--items N] [--holdout 0.1] [--epochs E]
                               [--features text,category,price] [--id-dropout P] [--seed S] [--json FILE]

Protocol (bench/README.md, "Cold items"):

1. **Log.** The synthetic generator (`homerank.engine.synthetic.generate`) writes the log and the catalogue
   (title with the segment's style word, category, price). Events with a null user, an unknown event type or
   no timestamp are dropped from the evaluation's ground truth (the ETL quarantines them).
2. **Hold-out.** A seeded random ``--holdout`` share of the catalogue items that have at least one event is held
   out: every event of theirs is removed from the log that homerank sees. The rest of the pipeline is the
   product's: ``etl`` (k-core, per-user temporal split), ``graph``, ``train`` (in process, `run_stage`).
3. **Models.** The same run is trained twice from the same seed: *today* (``train.content.features: []``, the
   default) and *ours* (``train.content.features`` = ``--features``); ours writes ``train/cold_items.parquet``,
   whose rows for the held-out items are x_i W / (L + 1) (`homerank.gnn.content`).
4. **Ground truth.** T_u = the held-out items user u has any event with (view, click, cart or purchase) in the
   full log, for every user u with a model embedding (the k-core kept u) and |T_u| > 0.
5. **Recall@K among the cold items** (the headline): for each such user, the held-out items are ranked by each
   method's score and Recall@K = |top-K ∩ T_u| / |T_u| (`homerank.gnn.metrics`, the LightGCN protocol), averaged
   over the users. Nothing is masked (no held-out item is in anyone's history). This is the question the
   homepage's new-arrivals section asks: which of the new items, for this user.
6. **Recall@K among all items** (``*_all_items_recall@20``, harder): the candidates are every graph item plus the
   held-out items, the user's known (train + valid) graph items are masked, and only T_u counts as a hit, so a
   cold item must outscore the warm items the user would also like.

Scores of user u for item i:

* ours: <E_u, x_i W / (L + 1)> with ours' final user embeddings (a graph item: its final embedding).
* mean vector (today's homepage, `homerank.homepage.catalogue.inductive_item_vectors` on `build_catalogue`):
  <E_u, mean of the final embeddings of the graph items of i's (category, price band)>, falling back to i's
  category, then all graph items; price band = the catalogue's price quartile; today's model.
* popularity within category: a_u(c_i) * pop(c_i), where a_u(c) = share of user u's known (train + valid) graph
  items in category c and pop(c) = mean number of training users per graph item of category c (a cold item has
  no popularity of its own, so it inherits its category's); ties by pop(c), then at random. Among all items a
  graph item uses its own number of training users instead of pop(c).
* random: i.i.d. uniform scores from the seed.

Also reported: every method's Recall@10/50 and NDCG@20, and the warm test Recall@20 of today's model and ours
(the evaluate stage's protocol), so that the content's effect on warm accuracy is visible.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.machine import machine_info
from homerank.engine import schema
from homerank.engine.backend import resolve_backend
from homerank.engine.split import SPLIT
from homerank.engine.synthetic import generate
from homerank.engine.synthetic_model import EVENT_TYPES, SyntheticSpec
from homerank.gnn.metrics import CSRIndex, evaluate_ranking
from homerank.gnn.scorer import Scorer
from homerank.homepage.catalogue import build_catalogue, inductive_item_vectors
from homerank.homepage.config import HomepageConfig
from homerank.jobs.artifacts import read_embedding_table, split_index
from homerank.jobs.config import JobConfig
from homerank.jobs.pipeline import run_stage
from homerank.jobs.rundir import RunDir
from homerank.jobs.stage_train import cold_items_path

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("runs/bench-data/cold_start")
DEFAULT_JSON = Path("bench/results/cold_start/summary.json")
KS = [10, 20, 50]
METHODS = ("ours", "category_popularity", "random", "mean_vector")

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def say(text: str) -> None:
    print(f"cold-start: {text}", flush=True)


def make_log(data: Path, spec: SyntheticSpec) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The generated log under ``data/log`` (reused while ``spec.json`` matches): (events folder, events, items)."""
    folder = data / "log"
    wanted = {"users": spec.users, "items": spec.items, "events": spec.events, "seed": spec.seed}
    spec_file = folder / "spec.json"
    if not (spec_file.exists() and json.loads(spec_file.read_text()).get("spec") == wanted):
        shutil.rmtree(folder, ignore_errors=True)
        summary = generate(folder, spec, workers=1)
        spec_file.write_text(json.dumps({"spec": wanted, "seconds": summary["seconds"]}) + "\n")
    return folder / "events", pd.read_parquet(folder / "events"), pd.read_parquet(folder / "items.parquet")


def hold_out(events: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """Sorted item ids: a seeded random ``share`` of the items that have at least one event."""
    items = np.sort(events[schema.ITEM].dropna().unique())
    rng = np.random.default_rng([seed, 19])
    return np.sort(rng.choice(items, size=max(1, int(round(share * items.size))), replace=False))


def _category_tables(catalogue: pd.DataFrame, item_index: pd.DataFrame, edges: pd.DataFrame, num_users: int,
                     num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """(a (U, C) user category shares over known graph items, item_pop (I,) training users per graph item,
    pop (C,) mean training users per graph item of each category, category -> column)."""
    categories = sorted(catalogue["category"].astype(str).unique())
    column = {name: c for c, name in enumerate(categories)}
    category_of = catalogue.set_index(schema.ITEM)["category"].astype(str)
    graph_category = np.full(num_items, -1, dtype=np.int64)
    mapped = item_index[schema.ITEM].map(category_of).map(column)
    graph_category[item_index[schema.ITEM_INDEX].to_numpy()] = mapped.fillna(-1).astype(np.int64).to_numpy()
    train = edges[edges[SPLIT] == "train"]
    item_pop = np.bincount(train[schema.ITEM_INDEX].to_numpy(), minlength=num_items).astype(np.float64)
    has = graph_category >= 0
    totals = np.bincount(graph_category[has], weights=item_pop[has], minlength=len(categories))
    counts = np.bincount(graph_category[has], minlength=len(categories))
    pop = totals / np.maximum(counts, 1)
    known = edges[edges[SPLIT].isin(["train", "valid"])]
    item_cat = graph_category[known[schema.ITEM_INDEX].to_numpy()]
    users = known[schema.USER_INDEX].to_numpy()
    ok = item_cat >= 0
    affinity = np.zeros((num_users, len(categories)))
    np.add.at(affinity, (users[ok], item_cat[ok]), 1.0)
    affinity /= np.maximum(affinity.sum(1, keepdims=True), 1.0)
    return affinity, item_pop, pop, column


def _dot(users: torch.Tensor, items: torch.Tensor) -> ScoreFn:
    return lambda batch: users[batch] @ items.T


def _random(n: int, seed: int) -> ScoreFn:
    generator = torch.Generator().manual_seed(seed)
    return lambda batch: torch.rand(batch.numel(), n, generator=generator)


def _category_popularity(affinity: np.ndarray, item_category: np.ndarray, item_pop: np.ndarray, seed: int
                         ) -> ScoreFn:
    """a_u(c_i) * p_i + 1e-9 * (p_i + 1e-3 * uniform): p normalised to max 1, so ties go by popularity, then
    at random (float64)."""
    affinity_t = torch.from_numpy(affinity)
    category = torch.from_numpy(item_category)
    pop = torch.from_numpy(item_pop / max(float(item_pop.max()), 1e-12))
    generator = torch.Generator().manual_seed(seed)

    def scores(batch: torch.Tensor) -> torch.Tensor:
        share = affinity_t[batch][:, category]  # (B, n)
        noise = torch.rand(batch.numel(), category.numel(), generator=generator, dtype=torch.float64)
        return share * pop + 1e-9 * (pop + 1e-3 * noise)

    return scores


def _metrics(scores: ScoreFn, truth: CSRIndex, exclude: CSRIndex | None) -> dict[str, float]:
    values = evaluate_ranking(scores, truth, exclude, KS, batch_size=1024)
    return {key: round(float(value), 6) for key, value in values.items() if key.startswith(("recall", "ndcg"))}


def evaluate_cold(run: RunDir, full_events: pd.DataFrame, items: pd.DataFrame, held_out: np.ndarray,
                  today: Scorer, ours: Scorer, seed: int) -> dict[str, Any]:
    """Every method's metrics among the cold items and among all items (module docstring)."""
    user_index = pd.read_parquet(run.user_index)
    item_index = pd.read_parquet(run.item_index)
    edges = pd.read_parquet(run.edges)
    num_users, num_items = ours.num_users, ours.num_items
    clean = full_events.dropna(subset=[schema.USER, schema.TS])
    clean = clean[clean[schema.EVENT].astype(str).str.lower().isin(EVENT_TYPES)]
    cold_pairs = clean[clean[schema.ITEM].isin(held_out)][[schema.USER, schema.ITEM]].drop_duplicates()
    users = cold_pairs[schema.USER].map(user_index.set_index(schema.USER)[schema.USER_INDEX])
    inside = users.notna().to_numpy()
    cold_column = pd.Series(np.arange(held_out.size), index=held_out)
    columns = cold_pairs[schema.ITEM].map(cold_column).to_numpy()
    truth_cold = CSRIndex.from_pairs(users[inside].astype(np.int64).to_numpy(), columns[inside], num_users,
                                     held_out.size)
    truth_all = CSRIndex.from_pairs(users[inside].astype(np.int64).to_numpy(), columns[inside] + num_items,
                                    num_users, num_items + held_out.size)
    known_all = split_index(edges, ["train", "valid"], num_users, num_items + held_out.size)

    # ours: the cold items' content embeddings from train/cold_items.parquet
    cold_ids, cold_vectors = read_embedding_table(cold_items_path(run), schema.ITEM)
    row_of = pd.Series(np.arange(len(cold_ids)), index=cold_ids.to_numpy())
    missing = ~pd.Index(held_out).isin(row_of.index)
    if missing.any():
        raise RuntimeError(f"{int(missing.sum())} held-out items have no row in {cold_items_path(run)}")
    ours_cold = torch.from_numpy(cold_vectors[row_of[held_out].to_numpy()])

    # today's mean vector, exactly as the homepage builds it
    interactions = pd.read_parquet(run.interactions)
    reference = interactions[schema.LAST_TS].max()
    catalogue = build_catalogue(pd.read_parquet(run.catalogue), interactions, item_index, edges, reference,
                                HomepageConfig())
    vectors = inductive_item_vectors(catalogue, today.item_embeddings)
    position = pd.Series(np.arange(len(catalogue.item_ids)), index=catalogue.item_ids)
    mean_cold = vectors[torch.from_numpy(position[held_out].to_numpy().copy())]

    affinity, item_pop, pop, column = _category_tables(items, item_index, edges, num_users, num_items)
    category_of = items.set_index(schema.ITEM)["category"].astype(str)
    cold_category = pd.Series(held_out).map(category_of).map(column).to_numpy().astype(np.int64)
    graph_category = np.zeros(num_items, dtype=np.int64)
    graph_category[item_index[schema.ITEM_INDEX].to_numpy()] = (
        item_index[schema.ITEM].map(category_of).map(column).fillna(0).astype(np.int64).to_numpy())

    among_cold = {
        "ours": _dot(ours.user_embeddings, ours_cold),
        "category_popularity": _category_popularity(affinity, cold_category, pop[cold_category], seed),
        "random": _random(held_out.size, seed),
        "mean_vector": _dot(today.user_embeddings, mean_cold),
    }
    among_all = {
        "ours": _dot(ours.user_embeddings, torch.cat([ours.item_embeddings, ours_cold])),
        "category_popularity": _category_popularity(
            affinity, np.concatenate([graph_category, cold_category]),
            np.concatenate([item_pop, pop[cold_category]]), seed),
        "random": _random(num_items + held_out.size, seed),
        "mean_vector": _dot(today.user_embeddings, torch.cat([today.item_embeddings, mean_cold])),
    }
    result: dict[str, Any] = {"among_cold": {}, "among_all": {}}
    for name in METHODS:
        result["among_cold"][name] = _metrics(among_cold[name], truth_cold, None)
        result["among_all"][name] = _metrics(among_all[name], truth_all, known_all)
    result["users"] = int((truth_cold.counts() > 0).sum())
    result["cold_pairs"] = int(inside.sum())
    result["cold_pairs_of_users_outside_model"] = int((~inside).sum())
    test = split_index(edges, "test", num_users, num_items)
    known = split_index(edges, ["train", "valid"], num_users, num_items)
    result["warm_test"] = {name: _metrics(scorer.score_fn(), test, known)
                           for name, scorer in (("today", today), ("ours", ours))}
    return result


def markdown(summary: dict[str, Any]) -> str:
    detail = summary["detail"]
    setup = summary["setup"]
    lines = [
        "# Cold items: Recall@20 on items held out of training", "",
        f"Log: {setup['events_generated']:,} generated events, {setup['users']:,} users, {setup['items']:,} "
        f"catalogue items (seed {setup['seed']}); {summary['cold_items']:,} items held out "
        f"({setup['holdout']:.0%} of the {setup['items_with_events']:,} items with events, "
        f"{detail['cold_pairs']:,} user-item pairs), evaluated on {detail['users']:,} users with a model "
        f"embedding. Ours: train.content.features {setup['features']}, id_dropout {setup['id_dropout']}, "
        f"text encoder {setup['text_encoder']} (dim {setup['text_dim']}); both models "
        f"{setup['epochs']} epochs at most, early stopping on validation NDCG@20.", "",
        "| method | Recall@20 among the cold items | NDCG@20 | Recall@50 | Recall@20 among all items |",
        "|---|---|---|---|---|",
    ]
    names = {"ours": "homerank + content (ours)", "category_popularity": "popularity within category",
             "random": "random", "mean_vector": "mean vector of category + price band (today)"}
    for name in METHODS:
        cold, every = detail["among_cold"][name], detail["among_all"][name]
        lines.append(f"| {names[name]} | {cold['recall@20']:.4f} | {cold['ndcg@20']:.4f} | {cold['recall@50']:.4f} "
                     f"| {every['recall@20']:.4f} |")
    warm = detail["warm_test"]
    lines += ["", f"Warm items (test split, evaluate stage protocol): Recall@20 today {warm['today']['recall@20']:.4f}"
              f", ours {warm['ours']['recall@20']:.4f}; NDCG@20 today {warm['today']['ndcg@20']:.4f}, ours "
              f"{warm['ours']['ndcg@20']:.4f}.", "",
              f"Seconds: {json.dumps(summary['seconds'])}", "",
              f"Machine: `{json.dumps(summary['machine'])}`"]
    return "\n".join(lines) + "\n"


def run_cold_start_bench(json_path: Path = DEFAULT_JSON, *, events: int = 1_000_000, users: int | None = None,
                         items: int | None = None, holdout: float = 0.1, epochs: int = 15,
                         features: tuple[str, ...] = ("text", "category", "price"), id_dropout: float = 0.0,
                         text_encoder: str = "wordllama_l2_supercat", text_dim: int = 64, seed: int = 0,
                         data: Path = DEFAULT_DATA, keep_run: bool = True) -> dict[str, Any]:
    """Generate, hold out, run etl + graph + train twice, evaluate; write ``json_path`` and a ``.md`` beside it."""
    users = users or max(1000, events // 50)
    items = items or max(500, events // 100)
    spec = SyntheticSpec(users=users, items=items, events=events, seed=42)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    events_dir, full_events, catalogue = make_log(data, spec)
    seconds["generate"] = round(time.perf_counter() - started, 1)
    held_out = hold_out(full_events, holdout, seed)
    warm_dir = data / f"warm-holdout{holdout}-seed{seed}"
    shutil.rmtree(warm_dir, ignore_errors=True)
    (warm_dir / "events").mkdir(parents=True)
    full_events[~full_events[schema.ITEM].isin(held_out)].to_parquet(warm_dir / "events" / "part-00000.parquet",
                                                                      index=False)
    say(f"{len(full_events):,} events, {held_out.size:,} items held out; warm log -> {warm_dir}")
    run = RunDir(data / f"run-holdout{holdout}-seed{seed}")
    shutil.rmtree(run.root, ignore_errors=True)
    backend = resolve_backend("cpu")
    base = {"seed": seed, "device": "cpu", "ingest": {"catalogue": str(data / "log" / "items.parquet")},
            "cluster": {"n_workers": 1}, "train": {"epochs": epochs}}
    for stage in ("etl", "graph"):
        tick = time.perf_counter()
        run_stage(stage, run, JobConfig(**base), backend, str(warm_dir / "events") if stage == "etl" else None,
                  show_progress=False)
        seconds[stage] = round(time.perf_counter() - tick, 1)
        say(f"{stage} done in {seconds[stage]:.1f}s")
    content = {"features": list(features), "id_dropout": id_dropout, "text_encoder": text_encoder,
               "text_dim": text_dim}
    scorers: dict[str, Scorer] = {}
    summaries: dict[str, Any] = {}
    for name, train_settings in (("today", {}), ("ours", {"content": content})):
        tick = time.perf_counter()
        config = JobConfig(**{**base, "train": {**base["train"], **train_settings}})
        summary = run_stage("train", run, config, backend, show_progress=False)
        seconds[f"train_{name}"] = round(time.perf_counter() - tick, 1)
        scorers[name] = Scorer.load(run.scorer)
        summaries[name] = {key: summary[key] for key in ("epochs", "best_epoch", "best_valid", "stopped_because",
                                                          "train_seconds", "content")}
        say(f"train {name}: {summary['epochs']} epochs, best {summary['best_epoch']}, valid ndcg@20 "
            f"{summary['best_valid']:.4f} ({seconds[f'train_{name}']:.1f}s)")
    tick = time.perf_counter()
    detail = evaluate_cold(run, full_events, catalogue, held_out, scorers["today"], scorers["ours"], seed)
    seconds["evaluate"] = round(time.perf_counter() - tick, 1)
    cold, every = detail["among_cold"], detail["among_all"]
    summary_out: dict[str, Any] = {
        "cold_items": int(held_out.size),
        "ours_recall@20": cold["ours"]["recall@20"],
        "category_popularity_recall@20": cold["category_popularity"]["recall@20"],
        "random_recall@20": cold["random"]["recall@20"],
        "mean_vector_recall@20": cold["mean_vector"]["recall@20"],
        "ranked_among": "the held-out (cold) items; *_all_items_recall@20: among every graph item plus the cold "
                        "items, the user's known items masked",
        **{f"{name}_all_items_recall@20": every[name]["recall@20"] for name in METHODS},
        "warm_test_recall@20": {name: values["recall@20"] for name, values in detail["warm_test"].items()},
        "users": detail["users"],
        "setup": {"events_generated": int(len(full_events)), "users": users, "items": items,
                  "items_with_events": int(full_events[schema.ITEM].nunique()), "holdout": holdout, "seed": seed,
                  "generator_seed": spec.seed, "epochs": epochs, "features": list(features),
                  "id_dropout": id_dropout, "text_encoder": text_encoder, "text_dim": text_dim,
                  "run": str(run.root)},
        "training": summaries,
        "detail": detail,
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)},
        "machine": machine_info(("wordllama", "scikit-learn")),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary_out, indent=1) + "\n")
    json_path.with_suffix(".md").write_text(markdown(summary_out))
    if not keep_run:
        shutil.rmtree(run.root, ignore_errors=True)
    return summary_out
