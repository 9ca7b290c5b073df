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
from homerank.gnn.linear_filter import LinearFilter, ensemble_scorer
from homerank.gnn.metrics import CSRIndex, ScoreFn, embedding_scorer
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
    return BipartiteGraph.from_dict(torch.load(require(run.graph, "graph"), weights_only=True))


def load_scorer(run: RunDir, edges: pd.DataFrame, device: torch.device) -> ScoreFn:
    """The run's scoring function: LightGCN embeddings, ensembled with GF-CF when the run fitted one."""
    user_emb, item_emb = load_embeddings(run)
    scorer = embedding_scorer(user_emb.to(device), item_emb.to(device))
    path = run.root / "train" / "linear_filter.pt"
    if not path.exists():
        return scorer
    state = torch.load(path, weights_only=True)
    fitted_on = ["train", "valid"] if bool(state.get("fit_on_valid", False)) else ["train"]
    train = edges[edges[SPLIT].isin(fitted_on)]
    linear = LinearFilter.from_state(state, train[schema.USER_INDEX].to_numpy(), train[schema.ITEM_INDEX].to_numpy(),
                                     user_emb.shape[0], item_emb.shape[0])
    prior_weight = float(state.get("popularity_weight", 0.0))
    return ensemble_scorer(scorer, linear.scorer(device), float(state["weight"]),
                           linear.popularity_prior(device), prior_weight)


def load_embeddings(run: RunDir) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.load(require(run.embeddings, "train"), weights_only=True)
    return data["users"], data["items"]
