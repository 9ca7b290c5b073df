"""Stage 3 — train: graph + training/validation edges -> LightGCN (``checkpoints/``), the optional GF-CF
filter with its share chosen on validation, and the final scorer that evaluate, rank, homepage and
`homerank.Run.recommend` all use (``train/scorer.pt``, `homerank.gnn.scorer`); ``train/summary.json`` holds
the per-epoch history.

With ``train.content.features`` (`homerank.gnn.content`) the model takes the catalogue's item features in layer
0, and ``train/cold_items.parquet`` (item_id, embedding: the format of ``embeddings/items.parquet``) holds the
final embedding x_i W / (L + 1) of every catalogue item the graph does not have, to be scored against the
scorer's user embeddings. The scorer itself keeps the graph's items only (its rows are the item index)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.graph import adjacency_from_pairs
from homerank.engine.memory import release_free_memory
from homerank.gnn.linear_filter import LinearFilter
from homerank.gnn.memory import check_training_memory
from homerank.gnn.metrics import CSRIndex, evaluate_blends
from homerank.gnn.model import PreviousModel
from homerank.gnn.scorer import Scorer, embedding_scorer, popularity_prior
from homerank.gnn.train import EvaluationHook, TrainData, TrainResult, check_finite, train_lightgcn
from homerank.jobs.artifacts import (
    EMBEDDING_COLUMN,
    EMBEDDING_METADATA,
    content_inputs,
    load_graph,
    pair_index,
    read_edges,
    require,
    training_data,
)
from homerank.jobs.config import JobConfig
from homerank.jobs.rundir import RunDir, atomic_path, write_json

log = logging.getLogger(__name__)


def run_train(run: RunDir, config: JobConfig, backend: Backend, show_progress: bool = True,
              resume: bool = False, on_evaluation: EvaluationHook | None = None) -> dict[str, Any]:
    # first of all: whatever stops this training, an earlier training's scorer must not stay to be ranked with
    run.scorer.unlink(missing_ok=True)
    cold_path = run.cold_items
    cold_path.unlink(missing_ok=True)  # an earlier training's cold items belong to its model
    graph = load_graph(run)
    # A_hat as the CSR operator first: the graph's COO copy (2 x 2E int64, 0.4 GB at 3 * 10^7 events) goes before
    # the edges are read (both together were the stage's peak there)
    operator = (graph.num_users, graph.num_items, graph.adjacency())
    del graph
    release_free_memory()
    # no test rows: training never sees them (and they are a fifth of the edges' memory)
    edges = read_edges(run, [schema.USER_INDEX, schema.ITEM_INDEX, schema.WEIGHT], splits=["train", "valid"])
    data = training_data(operator, edges)
    # the edges are read again after training (~1 s at 3 * 10^7 events) instead of being held through it (0.34 GiB)
    del operator, edges
    release_free_memory()
    # the default schedule for this many pairs (train.large_data_pairs), fixed for the refit too, before a warm start
    # scales its lr
    config = config.model_copy(update={"train": config.train.fixed_schedule(data.train_users.numel())})
    config, warm_start = _warm_start(run, config, data)
    content = config.train.content
    inputs = content_inputs(run, content, backend.torch_device) if content.enabled else None
    if inputs is not None:
        data.item_features = inputs.graph_features
        if inputs.missing_from_catalogue:
            log.warning("train.content: %d of %d graph items are not in the catalogue (zero feature rows)",
                        inputs.missing_from_catalogue, data.num_items)
    train_pairs, has_valid = data.train_users.numel(), data.valid is not None
    limit = int(config.train.memory_limit_gb * 2**30) if config.train.memory_limit_gb else None
    estimate = check_training_memory(data.num_users, data.num_items, train_pairs, config.train, config.evaluate,
                                     backend.torch_device, limit)
    log.info("memory guard: ~%.2f GiB needed, %.1f GiB free", estimate.bytes_needed / 2**30,
             estimate.bytes_available / 2**30)
    if not has_valid:
        log.warning("no validation edges (split.valid = 0): no early stopping, the last epoch is kept")
    if not resume:  # an earlier run's retraining checkpoints must not be resumed from
        for stale in run.retrain_checkpoints.glob("*.pt"):
            stale.unlink()
    result = train_lightgcn(data, config.train, config.evaluate, config.seed, backend.torch_device,
                            checkpoint_dir=run.checkpoints, on_evaluation=on_evaluation,
                            show_progress=show_progress, resume=resume)
    cosine = config.train.loss == "softmax"
    device = backend.torch_device
    # all known history, for the final scorer
    known = read_edges(run, [schema.USER_INDEX, schema.ITEM_INDEX, schema.WEIGHT], splits=["train", "valid"])
    propagate_known = (config.train.propagate_known_edges or config.train.retrain_with_valid) and has_valid
    user_emb = item_emb = None
    if config.train.linear_filter.enabled or not propagate_known:  # else the known graph's embeddings replace them
        user_emb, item_emb = result.model.embeddings(data.adjacency.to(device), cosine=cosine)  # training graph
    ensemble, linear, share, prior_weight = None, None, 0.0, 0.0
    if config.train.linear_filter.enabled:  # its share is chosen on validation with training-graph embeddings
        ensemble, linear, share, prior_weight = _fit_linear_filter(
            config, data, backend, user_emb, item_emb,
            (known[schema.USER_INDEX].to_numpy(), known[schema.ITEM_INDEX].to_numpy()))
    refit = None
    known_pairs = len(known)
    # the training pairs and validation lists are done with (the filter above was their last reader): at 3 * 10^7
    # events 2 x 12.5M int64 pairs, 0.2 GB
    data.train_users = data.train_items = torch.zeros(0, dtype=torch.long)
    data.valid = None
    if propagate_known:
        data.adjacency = None  # type: ignore[assignment]  # the training graph's A_hat is done with: memory
        release_free_memory()
        # only the CSR A_hat is made, from R_hat's CSR blocks: no (2, 2E) int64 edge index (0.46 GB at 3 * 10^7)
        known_adjacency = adjacency_from_pairs(known[schema.USER_INDEX].to_numpy(), known[schema.ITEM_INDEX].to_numpy(),
                                               known[schema.WEIGHT].to_numpy(), data.num_users, data.num_items,
                                               config.graph.edge_weight, backend)
        model = result.model
        if config.train.retrain_with_valid:
            refit = _retrain_lightgcn(run, config, known, data.num_users, data.num_items, known_adjacency,
                                      result.best_epoch, backend, show_progress, resume, data.item_features,
                                      data.warm_start)
            model = refit.model
        del known
        release_free_memory()
        user_emb, item_emb = model.embeddings(known_adjacency.to(device), cosine=cosine)
        del known_adjacency
        log.info("final embeddings: propagated over %d train + validation edges", known_pairs)
    else:
        del known
    final_model = refit.model if refit is not None else result.model
    if share <= 0 and not prior_weight:
        linear = None  # validation chose LightGCN alone: the filter takes no part in the final scores
    check_finite(f"in the final embeddings (best epoch {result.best_epoch})", config.train.lr,
                 user_embeddings=user_emb, item_embeddings=item_emb)  # nothing non-finite is ever saved
    content_summary = None
    if inputs is not None:
        cold_emb = final_model.cold_item_embeddings(inputs.cold_features, cosine=cosine).cpu()
        check_finite("in the cold items' embeddings", config.train.lr, cold_item_embeddings=cold_emb)
        content_summary = {"features": list(content.features), "feature_dim": int(inputs.graph_features.shape[1]),
                           "id_dropout": content.id_dropout, "graph_items_without_catalogue_row":
                           inputs.missing_from_catalogue, "cold_items": len(inputs.cold_ids),
                           "cold_items_file": str(cold_path) if content.write_cold_items else None}
        if content.write_cold_items:
            write_cold_items(cold_path, inputs.cold_ids, cold_emb.numpy(), {
                "format": "homerank.embeddings/1", "dim": int(cold_emb.shape[1]), "scorer": "lightgcn",
                "score": "dot product with the user vectors of train/scorer.pt (embeddings/users.parquet)",
                "items": "catalogue items outside the graph: x_i W / (L + 1) from their content features"})
            log.info("train.content: %d cold catalogue items -> %s", len(inputs.cold_ids), cold_path)
    scorer = Scorer(user_emb.cpu(), item_emb.cpu(), linear, share, prior_weight, settings={
        "model": "lightgcn", "loss": config.train.loss, "cosine": cosine, "embedding_dim": config.train.embedding_dim,
        "num_layers": config.train.num_layers, "best_epoch": result.best_epoch,
        "embeddings_propagated_over": "train+valid" if has_valid and (
            config.train.propagate_known_edges or config.train.retrain_with_valid) else "train",
        "retrained_with_valid": refit is not None,
        "content": content_summary,
        "linear_filter": None if ensemble is None else {"fit_on": ensemble["fit_on"],
                                                        **config.train.linear_filter.model_dump(mode="json")},
    })
    scorer.save(run.scorer)
    log.info("scorer: %s (filter share %.2f, popularity prior %.2f) -> %s", scorer.kind, share, prior_weight,
             run.scorer)
    refit_seconds = refit.train_seconds if refit is not None else 0.0
    summary = {
        "device": backend.device_label,
        "linear_filter": ensemble,
        "scorer": scorer.kind,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_valid": result.best_metric,
        "early_stopping_metric": config.train.early_stopping_metric,
        "schedule": {"pairs": train_pairs, "pairs_per_step": config.train.pairs_per_step(train_pairs),
                     "lr": config.train.lr},
        "stopped_because": result.stopped_because,
        "train_seconds": round(result.train_seconds + refit_seconds, 3),  # both trainings, when refitting
        "refit": None if refit is None else {"epochs": refit.epochs, "pairs": known_pairs,
                                             "train_seconds": round(refit_seconds, 3)},
        "content": content_summary,
        "warm_start": warm_start,
        "history": result.history,
    }
    write_json(run.train_summary, summary)
    return summary


def _warm_start(run: RunDir, config: JobConfig, data: TrainData) -> tuple[JobConfig, dict[str, Any] | None]:
    """With ``warm_start.previous_run``: ``data.warm_start`` set to the previous run's layer-0 rows
    (`homerank.jobs.warm_start.previous_model`), ``train.epochs`` to ``warm_start.epochs`` when that is fewer and
    ``train.lr`` times ``warm_start.lr_factor``; returns the config to
    train with and what ``train/summary.json`` records of it (None for a cold run)."""
    from homerank.jobs.warm_start import previous_checkpoint, previous_model, previous_run

    previous = previous_run(config, run)
    if previous is None:
        return config, None
    user_index = pd.read_parquet(require(run.user_index, "etl")).sort_values(schema.USER_INDEX, kind="stable")
    item_index = pd.read_parquet(require(run.item_index, "etl")).sort_values(schema.ITEM_INDEX, kind="stable")
    data.warm_start = previous_model(previous, user_index, item_index, config.train.embedding_dim)
    epochs = min(config.warm_start.epochs or config.train.epochs, config.train.epochs)
    lr = config.train.lr * config.warm_start.lr_factor  # fine-tuning a trained table: smaller steps
    config = config.model_copy(update={"train": config.train.model_copy(update={"epochs": epochs, "lr": lr})})
    return config, {"previous_run": str(previous.root), "checkpoint": str(previous_checkpoint(previous)),
                    "users_from_previous": int(data.warm_start.users.shape[0]),
                    "items_from_previous": int(data.warm_start.items.shape[0]),
                    "new_users": data.num_users - int(data.warm_start.users.shape[0]),
                    "new_items": data.num_items - int(data.warm_start.items.shape[0]), "max_epochs": epochs, "lr": lr}


def _fit_linear_filter(config: JobConfig, data: TrainData, backend: Backend, user_emb: torch.Tensor,
                       item_emb: torch.Tensor, known_pairs: tuple[np.ndarray, np.ndarray]
                       ) -> tuple[dict[str, Any], LinearFilter, float, float]:
    """Fit GF-CF on the training pairs and choose its share w and the popularity prior's weight p on validation;
    then (``refit_with_valid``) fit it again on ``known_pairs`` (train + validation), which the final scorer
    uses. Returns (summary for metrics.json, the filter, w, p)."""
    settings = config.train.linear_filter
    started = time.perf_counter()
    device = backend.torch_device
    linear = LinearFilter.fit_settings(data.train_users.numpy(), data.train_items.numpy(), data.num_users,
                                       data.num_items, settings, config.seed, device)
    weight, prior_weight, scores = 1.0 if data.valid is None else 0.0, 0.0, {}
    if data.valid is not None:
        train_index = CSRIndex.from_pairs(data.train_users.numpy(), data.train_items.numpy(), data.num_users,
                                          data.num_items)
        gnn = embedding_scorer(user_emb.to(device), item_emb.to(device))
        metric = config.train.early_stopping_metric
        ks = sorted({*config.evaluate.ks, int(metric.split("@")[1])})
        truth = data.valid.sample_users(settings.choice_users, config.seed)
        if truth is not data.valid:
            log.info("linear filter: share chosen on %d of %d validation users", int((truth.counts() > 0).sum()),
                     int((data.valid.counts() > 0).sum()))
        # every share with every prior weight; on a tie the earlier candidate (smaller prior weight) wins
        candidates = [(share, p) for p in settings.popularity_weights for share in settings.shares]
        blends = evaluate_blends(gnn, linear.scorer(device), candidates, truth, train_index, ks,
                                 config.evaluate.batch_size, device,
                                 prior=popularity_prior(linear.item_degree).to(device))
        for (share, p), values in blends.items():
            scores[_blend_key(share, p)] = values[metric]
            log.info("linear filter share %.2f, popularity prior %.2f: valid %s %.4f", share, p, metric, values[metric])
        weight, prior_weight = max(candidates, key=lambda c: scores[_blend_key(*c)])
        weight, prior_weight = float(weight), float(prior_weight)
    refit = settings.refit_with_valid and data.valid is not None and (weight > 0 or prior_weight != 0)
    if refit:
        users, items = known_pairs
        log.info("linear filter: refit on %d train + validation pairs", users.size)
        linear = LinearFilter.fit_settings(users, items, data.num_users, data.num_items, settings, config.seed,
                                           device)
    summary = {"weight": weight, "popularity_weight": prior_weight, "valid": scores,
               "fit_on": "train+valid" if refit else "train", "seconds": round(time.perf_counter() - started, 3)}
    return summary, linear, weight, prior_weight


def _blend_key(share: float, prior_weight: float) -> str:
    """metrics.json key of a candidate blend: the share alone ("0.15") when it has no popularity prior."""
    return str(share) if prior_weight == 0 else f"{share}, popularity {prior_weight}"


def cold_items_path(run: RunDir) -> Path:
    """``train/cold_items.parquet`` (`RunDir.cold_items`; kept for callers such as the cold-start bench)."""
    return run.cold_items


def write_cold_items(path: Path, ids: pd.Series, vectors: np.ndarray, note: dict[str, Any]) -> None:
    """(item_id, embedding fixed_size_list<float32>[d]) with ``note`` as the ``homerank.embeddings`` schema
    metadata, as ``embeddings/items.parquet`` (`homerank.jobs.artifacts.read_embedding_table` reads both);
    written to a temporary path and renamed."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), -1)
    table = pa.Table.from_pandas(ids.reset_index(drop=True).rename(schema.ITEM).to_frame(), preserve_index=False)
    table = table.append_column(EMBEDDING_COLUMN, pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()),
                                                                                    vectors.shape[1]))
    metadata = {**(table.schema.metadata or {}), EMBEDDING_METADATA: json.dumps(note).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)


def _retrain_lightgcn(run: RunDir, config: JobConfig, known: pd.DataFrame, num_users: int, num_items: int,
                    adjacency: torch.Tensor, epochs: int, backend: Backend, show_progress: bool,
                    resume: bool, item_features: torch.Tensor | None = None,
                    warm_start: PreviousModel | None = None) -> TrainResult:
    """Train a fresh LightGCN on all known pairs (train + validation) for ``epochs`` epochs, with the same
    seed and learning-rate schedule as the validated run, and no validation (it is in the training data); from the
    same warm start as that run, if it had one."""
    data = TrainData(
        num_users=num_users,
        num_items=num_items,
        train_users=pair_index(known[schema.USER_INDEX], num_users + num_items),
        train_items=pair_index(known[schema.ITEM_INDEX], num_users + num_items),
        adjacency=adjacency,
        item_features=item_features,
        warm_start=warm_start,
    )
    log.info("retrain_with_valid: a fresh model on %d train + validation pairs for %d epochs", len(known), epochs)
    folder = run.retrain_checkpoints
    return train_lightgcn(data, config.train, config.evaluate, config.seed, backend.torch_device,
                          checkpoint_dir=folder, show_progress=show_progress,
                          resume=resume and any(folder.glob("epoch_*.pt")), stop_epoch=epochs)
