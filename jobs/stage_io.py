"""Shared helpers for stages that read an earlier stage's artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from homerank.engine import schema
from homerank.engine.errors import HomerankError
from homerank.engine.split import SPLIT
from homerank.gnn.metrics import CSRIndex


def require(path: Path, stage: str) -> Path:
    """The artifact path, or a user error saying which stage to run first."""
    if not Path(path).exists():
        raise HomerankError(f"{path}: not found; run the {stage} stage first "
                            f"(`homerank {stage} --out RUN_DIR`, or `homerank run`)")
    return path


def split_index(edges: pd.DataFrame, split: str | list[str], num_users: int, num_items: int) -> CSRIndex:
    """Per-user item lists of one split, or of the union of several (e.g. ``["train", "valid"]``)."""
    part = edges[edges[SPLIT].isin([split] if isinstance(split, str) else split)]
    return CSRIndex.from_pairs(part[schema.USER_INDEX].to_numpy(), part[schema.ITEM_INDEX].to_numpy(), num_users, num_items)


def item_popularity(edges: pd.DataFrame, num_items: int) -> torch.Tensor:
    """Number of training users per item, shape (I,)."""
    train = edges[edges[SPLIT] == "train"]
    return torch.from_numpy(np.bincount(train[schema.ITEM_INDEX].to_numpy(), minlength=num_items).astype(np.float32))
