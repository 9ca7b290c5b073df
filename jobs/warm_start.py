"""Incremental runs: what a run warm-started from an earlier one (``warm_start.previous_run``) takes from it.

- **Id maps, extended, never re-encoded** (the ETL): the previous run's ``user_index.parquet`` and
  ``item_index.parquet`` keep every (id, index) row; the k-core's users and items they lack are appended after them
  in sorted id order (`homerank.engine.encode.extend_index`). An id of the previous maps that the new k-core lacks
  keeps its index too (an isolated node of the new graph: it has no training edge). The temporal split is made
  with the natural indices first, so the split is the one a cold run on the same log makes.
- **Layer 0** (the train stage): the previous model's final layer-0 ID rows (``checkpoints/best.pt``, or
  ``checkpoints/refit/best.pt`` when it retrained with validation) are copied into the first rows of the new
  table; new users and items keep their random initialisation (`homerank.gnn.model.LightGCNRecommender.warm_start`).
  Training then runs at most ``warm_start.epochs`` epochs with the usual early stopping.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.encode import extend_index, index_of
from homerank.engine.errors import HomerankError
from homerank.jobs.config import JobConfig
from homerank.jobs.rundir import RunDir, read_json

log = logging.getLogger(__name__)

EMBEDDING_TABLE = "lightgcn.embedding.weight"  # layer 0's ID table (N, d) in a checkpoint's model state
CONTENT_PREFIX = "content."  # the content projection's state in a checkpoint's model state


def previous_run(config: JobConfig, run: RunDir) -> RunDir | None:
    """The run ``run`` warm-starts from (``warm_start.previous_run``), or None for a cold run. It must be another
    run directory: its impressions name the run that served them, and its id maps and checkpoints stay as they are."""
    path = config.warm_start.previous_run
    if path is None:
        return None
    previous = RunDir(Path(path))
    if not previous.root.is_dir():
        raise HomerankError(f"warm_start.previous_run {path}: not a run directory; give a finished run's --out")
    if previous.root.resolve() == run.root.resolve():
        raise HomerankError(f"warm_start.previous_run {path}: is this run's own directory; write the incremental run "
                            "to another --out")
    return previous


def previous_id_maps(previous: RunDir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The previous run's (user_index, item_index) tables, in index order."""
    tables = []
    for path, id_column, index_column in ((previous.user_index, schema.USER, schema.USER_INDEX),
                                          (previous.item_index, schema.ITEM, schema.ITEM_INDEX)):
        if not path.is_file():
            raise HomerankError(f"{path}: not found; warm_start.previous_run must be a run whose etl stage finished")
        table = pd.read_parquet(path)
        if list(table.columns) != [id_column, index_column]:
            raise HomerankError(f"{path}: expected the columns {id_column}, {index_column}; is it a homerank run?")
        tables.append(table.sort_values(index_column, kind="stable").reset_index(drop=True))
    return tables[0], tables[1]


def extend_id_maps(previous: RunDir, user_index: pd.DataFrame, item_index: pd.DataFrame
                   ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray, dict[str, Any]]:
    """The previous run's id maps extended by this ETL's k-core ids (``user_index``/``item_index`` as
    `homerank.engine.partitioned.id_tables` numbers them: 0..n-1 in sorted id order).

    Returns (users, items, user_remap (U,), item_remap (I,), stats): the extended tables, the extended index of each
    natural index (for `homerank.engine.partitioned.reindex`) and counts for ``etl/stats.json``."""
    old_users, old_items = previous_id_maps(previous)
    for name, old, new, column in (("user", old_users, user_index, schema.USER),
                                   ("item", old_items, item_index, schema.ITEM)):
        if len(old) and len(new) and _id_kind(old[column]) != _id_kind(new[column]):
            raise HomerankError(
                f"{previous.root}: its {name} ids are {_id_kind(old[column])}, this log's are "
                f"{_id_kind(new[column])}: a warm start needs one id form (set ingest.id_dtype as that run did)")
    users = extend_index(old_users, user_index[schema.USER], schema.USER, schema.USER_INDEX)
    items = extend_index(old_items, item_index[schema.ITEM], schema.ITEM, schema.ITEM_INDEX)
    user_remap = index_of(users, user_index[schema.USER], schema.USER, schema.USER_INDEX)
    item_remap = index_of(items, item_index[schema.ITEM], schema.ITEM, schema.ITEM_INDEX)
    stats = {
        "previous_run": str(previous.root),
        "users": {"kept": len(old_users), "new": len(users) - len(old_users),
                  "without_edges": len(old_users) - int((user_remap < len(old_users)).sum())},
        "items": {"kept": len(old_items), "new": len(items) - len(old_items),
                  "without_edges": len(old_items) - int((item_remap < len(old_items)).sum())},
    }
    log.info("warm start: id maps of %s extended: users %s, items %s", previous.root, stats["users"], stats["items"])
    return users, items, user_remap, item_remap, stats


def _id_kind(ids: pd.Series) -> str:
    return "integers" if pd.api.types.is_integer_dtype(ids.dtype) else "strings"


def previous_checkpoint(previous: RunDir) -> Path:
    """The checkpoint holding the previous run's final layer 0: ``checkpoints/refit/best.pt`` when it retrained
    with validation (``train/summary.json``: refit), else ``checkpoints/best.pt``."""
    summary = read_json(previous.train_summary) if previous.train_summary.is_file() else {}
    path = previous.retrain_checkpoints / "best.pt" if summary.get("refit") else previous.checkpoints / "best.pt"
    if not path.is_file():
        raise HomerankError(f"{path}: not found; warm_start.previous_run must be a run whose train stage finished "
                            "(its checkpoints kept)")
    return path


def previous_model(previous: RunDir, user_index: pd.DataFrame, item_index: pd.DataFrame, embedding_dim: int) -> Any:
    """The previous run's layer-0 rows (`homerank.gnn.model.PreviousModel`) for a run whose id maps
    (``user_index``, ``item_index``, in index order) extend the previous run's; anything else is a
    `HomerankError` saying what to rerun."""
    import torch

    from homerank.gnn.model import PreviousModel
    from homerank.gnn.train import load_state

    old_users, old_items = previous_id_maps(previous)
    for name, old, new, column in (("user", old_users, user_index, schema.USER),
                                   ("item", old_items, item_index, schema.ITEM)):
        head = new[column].iloc[: len(old)].reset_index(drop=True)
        if len(new) < len(old) or not head.astype(str).equals(old[column].astype(str)):
            raise HomerankError(f"{name}_index.parquet does not extend {previous.root}'s: run the etl stage again "
                                f"with warm_start.previous_run {previous.root}")
    path = previous_checkpoint(previous)
    state = load_state(path)["model"]
    table = state.get(EMBEDDING_TABLE)
    if not isinstance(table, torch.Tensor) or table.shape[0] != len(old_users) + len(old_items):
        raise HomerankError(f"{path}: its layer 0 does not match {previous.root}'s id maps ({len(old_users)} users + "
                            f"{len(old_items)} items); retrain that run, or warm-start from another")
    if table.shape[1] != embedding_dim:
        raise HomerankError(f"{path}: embeddings of size {table.shape[1]}, train.embedding_dim is {embedding_dim}; "
                            f"a warm start keeps the size: set train.embedding_dim {table.shape[1]}")
    content = {name.removeprefix(CONTENT_PREFIX): value for name, value in state.items()
               if name.startswith(CONTENT_PREFIX)}
    log.info("warm start: layer 0 of %d users and %d items from %s", len(old_users), len(old_items), path)
    return PreviousModel(users=table[: len(old_users)].float(), items=table[len(old_users):].float(),
                         content=content or None)


def fingerprint_files(config: JobConfig) -> dict[str, list[str]]:
    """Per stage, the previous run's files a warm-started stage reads (the etl: its id maps and impressions
    manifest; train: its checkpoint), for the resume fingerprints; empty for a cold run."""
    previous = config.warm_start.previous_run
    if previous is None:
        return {}
    run = RunDir(Path(previous))
    files = {"etl": [run.user_index, run.item_index, run.impressions / "_SUCCESS.json"],
             "train": [run.checkpoints / "best.pt", run.retrain_checkpoints / "best.pt"]}
    return {stage: [str(path) for path in paths if path.is_file()] for stage, paths in files.items()}
