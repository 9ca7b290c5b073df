"""Reading an earlier stage's artifacts: every stage loads what it needs from here, so no stage imports another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from homerank.engine import schema
from homerank.engine.errors import HomerankError
from homerank.engine.graph import BipartiteGraph
from homerank.engine.split import SPLIT
from homerank.gnn.metrics import CSRIndex
from homerank.gnn.scorer import ScoreFn, Scorer
from homerank.jobs.rundir import RunDir


def require(path: Path, stage: str) -> Path:
    """The artifact path, or a user error saying which stage to run first."""
    if not Path(path).exists():
        raise HomerankError(f"{path}: not found; run the {stage} stage first "
                            f"(`homerank {stage} --out RUN_DIR`, or `homerank run`)")
    return path


def split_index(edges: pd.DataFrame, split: str | list[str], num_users: int, num_items: int) -> CSRIndex:
    """Per-user item lists of one split, or of the union of several (e.g. ``["train", "valid"]``)."""
    part = edges[edges[SPLIT].isin([split] if isinstance(split, str) else split)]
    return CSRIndex.from_pairs(part[schema.USER_INDEX].to_numpy(), part[schema.ITEM_INDEX].to_numpy(), num_users,
                               num_items)


def item_popularity(edges: pd.DataFrame, num_items: int) -> torch.Tensor:
    """Number of training users per item, shape (I,)."""
    train = edges[edges[SPLIT] == "train"]
    return torch.from_numpy(np.bincount(train[schema.ITEM_INDEX].to_numpy(), minlength=num_items).astype(np.float32))


def load_graph(run: RunDir) -> BipartiteGraph:
    """The graph stage's ``graph/graph.pt``; a file torch cannot load (truncated, corrupt, foreign) or one without
    a graph in it is a one-line `HomerankError` saying to run the graph stage again."""
    path = require(run.graph, "graph")
    try:
        return BipartiteGraph.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - a damaged artifact is the user's to rebuild
        raise HomerankError(f"{path}: not a readable homerank graph ({type(exc).__name__}); run the graph stage "
                            "again (`homerank graph --out RUN_DIR`)") from None


def load_scorer(run: RunDir, device: torch.device | str = "cpu") -> ScoreFn:
    """The run's final scoring function (`homerank.gnn.scorer.Scorer`, as the train stage saved it)."""
    return Scorer.load(require(run.scorer, "train")).score_fn(device)


def load_embeddings(run: RunDir) -> tuple[torch.Tensor, torch.Tensor]:
    """The final user (U, d) and item (I, d) embeddings of the run's scorer."""
    scorer = Scorer.load(require(run.scorer, "train"))
    return scorer.user_embeddings, scorer.item_embeddings
