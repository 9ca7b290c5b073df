"""Top-K recommendations in original ids from a trained run, for any list of users: the one code path behind the
rank stage (every user with history) and `homerank.Run.recommend` (the users you ask for).

* Users in the model get the saved final scorer's scores (`homerank.gnn.scorer.Scorer`).
* Users with history whom the k-core filter dropped (no training history), and users the run has never seen,
  get the popularity ranking: score = number of training users of the item.
* With ``exclude_seen``, items on which the user had any of ``rank.exclude_event_types`` (default: purchase),
  at any time in the log, are never ranked (logs without event types, the lightgcn format: every known pair).

The answer's ``source`` column says which ranking each user got: ``model``, ``popularity:no_training_history``
or ``popularity:unknown_user``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from homerank.engine import schema
from homerank.engine.encode import decode
from homerank.gnn.metrics import CSRIndex, top_k
from homerank.gnn.scorer import ScoreFn, Scorer, popularity_scorer
from homerank.jobs.artifacts import item_popularity, require
from homerank.jobs.rundir import RunDir

RANKING_COLUMNS = ["user_id", "rank", "item_id", "score"]
MODEL, NO_TRAINING_HISTORY, UNKNOWN_USER = "model", "popularity:no_training_history", "popularity:unknown_user"


def excluded_pairs(interactions: pd.DataFrame, exclude_types: list[str]) -> pd.DataFrame:
    """(user_id, item_id) pairs never to rank. Logs without event types (the lightgcn format) carry only
    ``n_interaction``: then every known pair is excluded."""
    if not exclude_types:
        return interactions.iloc[:0][[schema.USER, schema.ITEM]]
    columns = [schema.count_column(t) for t in exclude_types if schema.count_column(t) in interactions.columns]
    if not columns and schema.count_column("interaction") in interactions.columns:
        columns = [schema.count_column("interaction")]
    mask = np.zeros(len(interactions), dtype=bool)
    for column in columns:
        mask |= interactions[column].to_numpy() > 0
    return interactions.loc[mask, [schema.USER, schema.ITEM]]


@dataclass
class Recommender:
    """What a trained run needs to rank any user: the scorer, the id tables, the history and the exclusions.

    Attributes:
        scorer: the run's final scorer over U model users and I items.
        user_index / item_index: (original id, contiguous index) tables of the model.
        history_users: (H,) ids of every user with history in the log (k-core survivors or not).
        excluded: (user_id, item_id) pairs never ranked when ``exclude_seen``.
        popularity: (I,) training users per item, the fallback ranking.
    """

    scorer: Scorer
    user_index: pd.DataFrame
    item_index: pd.DataFrame
    history_users: np.ndarray
    excluded: pd.DataFrame
    popularity: torch.Tensor
    device: torch.device | str = "cpu"
    batch_size: int = 4096
    _model_row: pd.Index | None = field(default=None, repr=False)  # user ids in user_index row order
    _history: pd.Index | None = field(default=None, repr=False)

    @classmethod
    def from_run(cls, run: RunDir, exclude_event_types: list[str], device: torch.device | str = "cpu",
                 batch_size: int = 4096) -> Recommender:
        scorer = Scorer.load(require(run.scorer, "train"))
        interactions = pd.read_parquet(require(run.interactions, "etl"))
        edges = pd.read_parquet(require(run.edges, "etl"), columns=[schema.ITEM_INDEX, "split"])
        return cls(scorer, pd.read_parquet(require(run.user_index, "etl")),
                   pd.read_parquet(require(run.item_index, "etl")),
                   interactions[schema.USER].drop_duplicates().to_numpy(),
                   excluded_pairs(interactions, exclude_event_types), item_popularity(edges, scorer.num_items),
                   device, batch_size)

    def all_users(self) -> pd.DataFrame:
        """Every user with history: model users in index order, then the rest sorted by id (the rank stage)."""
        model_users = self.user_index.sort_values(schema.USER_INDEX)[schema.USER]
        modelled = pd.Series(self.history_users).isin(self.user_index[schema.USER]).to_numpy()
        rest = pd.Series(self.history_users[~modelled]).sort_values(kind="stable")
        return pd.concat([model_users, rest], ignore_index=True).to_numpy()

    def allowed_items(self, user_ids: np.ndarray) -> np.ndarray:
        """(len(user_ids),) how many items may be ranked for each user: every item of the model less the user's
        excluded ones (``excluded`` pairs whose item the model knows)."""
        pairs = self.excluded.merge(self.item_index[[schema.ITEM]], on=schema.ITEM).drop_duplicates()
        per_user = pairs.groupby(schema.USER).size()
        return self.scorer.num_items - per_user.reindex(user_ids, fill_value=0).to_numpy()

    def recommend(self, user_ids: Iterable, k: int, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-``k`` items per requested user (duplicates answered once, in the order asked), as rows of
        user_id, rank (1..k), item_id, score and source. A user left with fewer than ``k`` allowed items gets
        fewer rows."""
        if self._model_row is None:  # id lookups built once per recommender
            self._model_row = pd.Index(self.user_index[schema.USER])
            self._history = pd.Index(self.history_users)
        run_dtype = self.user_index[schema.USER].dtype
        given = user_ids if isinstance(user_ids, (np.ndarray, pd.Series, pd.Index)) else list(user_ids)
        values = pd.Series(given)
        if values.dtype != run_dtype:  # ids from a caller: one canonical form per value (few of them)
            as_id = _integer_id if pd.api.types.is_integer_dtype(run_dtype) else str
            values = values.astype(object).map(as_id)
        requested = pd.Series(pd.unique(values))  # first occurrence order
        position = self._model_row.get_indexer(requested)
        in_model = position >= 0
        known = self._history.get_indexer(requested) >= 0
        frame = pd.DataFrame({schema.USER: requested.to_numpy(dtype=object),
                              "source": np.where(in_model, MODEL, np.where(known, NO_TRAINING_HISTORY, UNKNOWN_USER)),
                              "position": np.arange(len(requested))})
        model_rows = self.user_index[schema.USER_INDEX].to_numpy()[position[in_model]]
        k = min(k, self.scorer.num_items)
        parts = []
        if in_model.any():
            rows = model_rows.astype(np.int64)
            parts.append(self._rank(self.scorer.score_fn(self.device), frame[in_model], rows, self.scorer.num_users,
                                    k, exclude_seen))
        if (~in_model).any():
            rows = np.arange(int((~in_model).sum()), dtype=np.int64)
            scores = popularity_scorer(self.popularity.to(self.device))
            parts.append(self._rank(scores, frame[~in_model], rows, rows.size, k, exclude_seen))
        columns = [*RANKING_COLUMNS, "source"]
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        out = pd.concat(parts, ignore_index=True)
        order = np.lexsort((out["rank"].to_numpy(), out["position"].to_numpy()))
        out = out.iloc[order][columns].reset_index(drop=True)
        if len(out) and (out["source"] != UNKNOWN_USER).all():
            out["user_id"] = out["user_id"].astype(self.user_index[schema.USER].dtype)
        return out

    def _rank(self, score_fn: ScoreFn, users: pd.DataFrame, rows: np.ndarray, num_rows: int, k: int,
              exclude_seen: bool) -> pd.DataFrame:
        """Top-k of ``score_fn`` for ``users`` (whose score rows are ``rows``), excluded pairs masked."""
        exclude = None
        if exclude_seen:
            known = (users["source"] != UNKNOWN_USER).to_numpy()  # the unknown have nothing to exclude
            asked = pd.DataFrame({schema.USER: users[schema.USER].to_numpy()[known], "row": rows[known]})
            asked[schema.USER] = asked[schema.USER].astype(self.excluded[schema.USER].dtype)
            pairs = self.excluded.merge(asked, on=schema.USER).merge(self.item_index, on=schema.ITEM)
            exclude = CSRIndex.from_pairs(pairs["row"].to_numpy(), pairs[schema.ITEM_INDEX].to_numpy(), num_rows,
                                          self.scorer.num_items)
        items, scores = top_k(score_fn, torch.from_numpy(rows), k, exclude, self.batch_size, self.device)
        width = items.shape[1]
        frame = pd.DataFrame({
            "user_id": np.repeat(users[schema.USER].to_numpy(), width),
            "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), len(users)),
            "item_id": decode(items.numpy().ravel(), self.item_index, schema.ITEM, schema.ITEM_INDEX),
            "score": scores.numpy().ravel().astype(np.float32),
            "source": np.repeat(users["source"].to_numpy(), width),
            "position": np.repeat(users["position"].to_numpy(), width),
        })
        return frame[torch.isfinite(scores).numpy().ravel()]


def _integer_id(value: object) -> object:
    """``42``, ``np.int64(42)``, ``"42"`` and ``42.0`` are the integer id 42; anything else stays as given (and is
    then an unknown user)."""
    if isinstance(value, (bool, np.bool_)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        pass
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value
    return int(number) if np.isfinite(number) and number.is_integer() else value
