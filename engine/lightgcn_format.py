"""The ``lightgcn`` input format: a folder with ``train.txt``, ``test.txt`` and an optional ``valid.txt``,
one line per user: ``user item item ...`` (whitespace separated, 0-based dense ids), as published with the
NGCF / LightGCN papers (Gowalla, Yelp2018, Amazon-Book).

The split is given, so there is no k-core and no re-encoding: user u is index u, item i is index i. When
``valid.txt`` is absent, a validation slice is carved out of each user's training items at random (seeded,
fraction ``split.valid``) for early stopping, so the test file is never used for model selection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from homerank.engine.errors import HomerankError
from homerank.engine.split import holdout_size

SPLIT_FILES = ("train", "valid", "test")


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) int64 arrays from one ``user item item ...`` file. Bad tokens name file and line."""
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                values = np.array(tokens, dtype=np.int64)
            except ValueError:
                raise HomerankError(f"{path}: line {number}: expected integer ids `user item item ...`") from None
            if (values < 0).any():
                raise HomerankError(f"{path}: line {number}: negative id")
            if values.size > 1:
                users.append(np.full(values.size - 1, values[0], dtype=np.int64))
                items.append(values[1:])
    if not users:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(users), np.concatenate(items)


def carve_validation(users: np.ndarray, items: np.ndarray, size: int | float, seed: int) -> np.ndarray:
    """Boolean mask over training pairs: a random N (int) or fraction (float, rounded, at least one) of each
    user's items, never all of them (users with one item keep it in training)."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(users.size), users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, users.size])
    take = np.minimum(holdout_size(size, counts), np.maximum(counts - 1, 0))
    position = np.arange(users.size) - np.repeat(starts, counts)
    mask = np.zeros(users.size, dtype=bool)
    mask[order] = position < np.repeat(take, counts)
    return mask


def load_lightgcn(folder: str, valid_size: int | float, seed: int) -> tuple[pd.DataFrame, int, int, bool]:
    """Edges (user_index, item_index, split) plus (num_users, num_items, whether valid came from a file)."""
    root = Path(folder)
    if not root.is_dir():
        raise HomerankError(f"{root}: the lightgcn format expects a folder with train.txt and test.txt")
    for required in ("train.txt", "test.txt"):
        if not (root / required).is_file():
            raise HomerankError(f"{root / required}: missing (lightgcn format needs train.txt and test.txt)")
    parts = {}
    for name in SPLIT_FILES:
        file = root / f"{name}.txt"
        if file.is_file():
            parts[name] = read_pairs(file)
    if parts["train"][0].size == 0:
        raise HomerankError(f"{root / 'train.txt'}: no (user, item) pairs")
    valid_from_file = "valid" in parts
    if not valid_from_file and valid_size > 0:
        users, items = parts["train"]
        mask = carve_validation(users, items, valid_size, seed)
        parts["train"] = (users[~mask], items[~mask])
        parts["valid"] = (users[mask], items[mask])
    frames = [pd.DataFrame({"user_index": u, "item_index": i, "split": name}) for name, (u, i) in parts.items()]
    edges = pd.concat(frames, ignore_index=True).drop_duplicates(["user_index", "item_index", "split"])
    edges["split"] = pd.Categorical(edges["split"], categories=list(SPLIT_FILES))
    num_users = int(edges["user_index"].max()) + 1
    num_items = int(edges["item_index"].max()) + 1
    return edges.reset_index(drop=True), num_users, num_items, valid_from_file
