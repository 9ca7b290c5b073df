"""Stage 3 — train: graph + training/validation edges -> LightGCN (checkpoints/, train/embeddings.pt,
train/summary.json with the per-epoch history)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from engine import schema as S
from engine.backend import Backend
from engine.split import SPLIT
from gnn.train import TrainData, train_lightgcn
from jobs.config import JobConfig
from jobs.rundir import RunDir, atomic_path, write_json
from jobs.stage_graph import load_graph
from jobs.stage_io import require, split_index

log = logging.getLogger(__name__)


def run_train(run: RunDir, config: JobConfig, backend: Backend, show_progress: bool = True) -> dict[str, Any]:
    graph = load_graph(run)
    edges = pd.read_parquet(require(run.edges, "etl"))
    train = edges[edges[SPLIT] == "train"]
    has_valid = bool((edges[SPLIT] == "valid").any())
    data = TrainData(
        num_users=graph.num_users,
        num_items=graph.num_items,
        train_users=torch.from_numpy(train[S.USER_INDEX].to_numpy().copy()),
        train_items=torch.from_numpy(train[S.ITEM_INDEX].to_numpy().copy()),
        adjacency=graph.adjacency(),
        valid=split_index(edges, "valid", graph.num_users, graph.num_items) if has_valid else None,
    )
    if not has_valid:
        log.warning("no validation edges (split.valid = 0): no early stopping, the last epoch is kept")
    result = train_lightgcn(data, config.train, config.evaluate, config.seed, backend.torch_device,
                            checkpoint_dir=run.checkpoints,
                            snapshot_dir=run.root / "train" / "snapshots" if config.train.snapshots else None,
                            show_progress=show_progress)
    user_emb, item_emb = result.model.embeddings(data.adjacency.to(backend.torch_device),
                                                 cosine=config.train.loss == "softmax")
    with atomic_path(run.embeddings) as tmp:
        torch.save({"users": user_emb.cpu(), "items": item_emb.cpu()}, tmp)
    summary = {
        "device": backend.device_label,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_valid": result.best_metric,
        "early_stopping_metric": config.train.early_stopping_metric,
        "stopped_because": result.stopped_because,
        "train_seconds": round(result.train_seconds, 3),
        "history": result.history,
    }
    write_json(run.train_summary, summary)
    return summary


def load_embeddings(run: RunDir) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.load(require(run.embeddings, "train"), weights_only=True)
    return data["users"], data["items"]
