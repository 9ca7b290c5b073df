"""Top-K recommendations in original ids from a trained run, for any list of users: the one code path behind the
rank stage (every user with history) and `homerank.Run.recommend` (the users you ask for).

* Users in the model get the saved final scorer's scores (`homerank.gnn.scorer.Scorer`).
* Users with history whom the k-core filter dropped (no training history), and users the run has never seen,
  get the popularity ranking: score = number of training users of the item.
* With ``exclude_seen``, items on which the user had any of ``rank.exclude_event_types`` (default: purchase),
  at any time in the log, are never ranked (logs without event types, the lightgcn format: every known pair).

The answer's ``source`` column says which ranking each user got: ``model``, ``popularity:no_training_history``
or ``popularity:unknown_user``.

Retrieval for large catalogues: with an `ItemSearch` attached (the rank stage and `homerank.Run.recommend` attach
one from ``rank.index_min_items`` items on), a model user's candidates are the ``overfetch * k`` (plus as many as
the user has excluded items) best items of the faiss index over the LightGCN item vectors; the candidates are
then re-scored exactly by the scorer, excluded items dropped and the best ``k`` kept. The index answers the
inner product u . x_j through a cosine index (`homerank.gnn.item_index.ItemIndex`) with the usual lift
(Bachrach et al. 2014): every item row becomes [x_j, sqrt(M^2 - |x_j|^2)] (M = max_j |x_j|, so all rows have
norm M) and the query [u, 0], whose cosine with row j is u . x_j / (|u| M): the same order as u . x_j. With an
exact index and a LightGCN scorer the answer is the exact top-k; with the LightGCN + GF-CF blend the candidates
come from the LightGCN part only (the blend needs the full score row to z-score it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from homerank.engine import schema
from homerank.engine.memory import release_free_memory
from homerank.gnn.dot_top_k import DotTopK, searches_exactly
from homerank.gnn.keys import is_member
from homerank.gnn.metrics import CSRIndex, popularity_top_k, top_k
from homerank.gnn.scorer import ScoreFn, Scorer
from homerank.jobs.artifacts import LEAN_READ, item_popularity, read_edges, read_embedding_table, require
from homerank.jobs.rundir import RunDir

if TYPE_CHECKING:
    from homerank.gnn.item_index import ItemIndex
    from homerank.jobs.config import RankConfig

log = logging.getLogger(__name__)

RANKING_COLUMNS = ["user_id", "rank", "item_id", "score"]
MODEL, NO_TRAINING_HISTORY, UNKNOWN_USER = "model", "popularity:no_training_history", "popularity:unknown_user"


def excluded_pairs(interactions: pd.DataFrame, exclude_types: list[str]) -> pd.DataFrame:
    """(user_id, item_id) pairs never to rank. Logs without event types (the lightgcn format) carry only
    ``n_interaction``: then every known pair is excluded."""
    mask = np.zeros(len(interactions), dtype=bool)
    for column in exclusion_columns(exclude_types, interactions.columns):
        mask |= interactions[column].to_numpy() > 0
    return interactions.loc[mask, [schema.USER, schema.ITEM]]


def exclusion_columns(exclude_types: list[str], present: Iterable[str]) -> list[str]:
    """The count columns among ``present`` that mark a pair as excluded (`excluded_pairs`): those of
    ``exclude_types``, else ``n_interaction`` (the lightgcn format) when there are types to exclude."""
    present = set(present)
    columns = [schema.count_column(t) for t in exclude_types if schema.count_column(t) in present]
    if exclude_types and not columns and schema.count_column("interaction") in present:
        columns = [schema.count_column("interaction")]
    return columns


def read_history(run: RunDir, exclude_types: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """(every user with history, distinct ids in first-seen order; the `excluded_pairs`) from the ETL's
    ``etl/interactions/``, reading the user, item and excluding count columns only: at 3 * 10^7 events 18M
    interactions of nine columns took ~1.3 GiB whole."""
    path = require(run.interactions, "etl")
    counts = exclusion_columns(exclude_types, pq.ParquetDataset(path).schema.names)
    interactions = pd.read_parquet(path, columns=[schema.USER, schema.ITEM, *counts], to_pandas_kwargs=LEAN_READ)
    history_users = interactions[schema.USER].drop_duplicates().to_numpy()
    excluded = excluded_pairs(interactions, exclude_types).reset_index(drop=True)
    del interactions
    release_free_memory()
    return history_users, excluded


def lift_items(item_vectors: np.ndarray) -> np.ndarray:
    """(I, d + 1) rows [x_j, sqrt(M^2 - |x_j|^2)], M = max_j |x_j|: every row has norm M, so a cosine index over
    them orders items by the inner product with a query [u, 0] (module docstring)."""
    vectors = np.asarray(item_vectors, dtype=np.float64)
    norms = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.clip(norms.max(initial=0.0) - norms, 0.0, None))
    return np.hstack([vectors, extra[:, None]]).astype(np.float32)


def lift_queries(user_vectors: np.ndarray) -> np.ndarray:
    """(B, d + 1) rows [u, 0]: the queries for an index over `lift_items` rows."""
    vectors = np.asarray(user_vectors, dtype=np.float32)
    return np.hstack([vectors, np.zeros((vectors.shape[0], 1), dtype=np.float32)])


@dataclass
class ItemSearch:
    """A faiss index over the lifted item vectors (`lift_items`) of one scorer; index row j is item index j."""

    index: ItemIndex

    @classmethod
    def build(cls, item_vectors: np.ndarray, exact_items: int) -> ItemSearch:
        """Exact (flat) up to ``exact_items`` items, HNSW above (`homerank.gnn.item_index.ItemIndex`)."""
        from homerank.gnn.item_index import ItemIndex

        return cls(ItemIndex(exact_threshold=exact_items).build(lift_items(item_vectors)))

    @classmethod
    def for_run(cls, run: RunDir, scorer: Scorer, exact_items: int) -> ItemSearch:
        """The run's saved ``embeddings/items.faiss`` when it was made from exactly this scorer's item vectors
        (``embeddings/items.parquet`` holds them) and is exact or approximate as ``exact_items`` asks, else a new
        index built from the scorer."""
        from homerank.gnn.item_index import ItemIndex

        items = scorer.item_embeddings.numpy()
        if run.item_faiss.is_file() and run.item_embeddings.is_file():
            try:
                _, saved = read_embedding_table(run.item_embeddings, schema.ITEM)
                if saved.shape == items.shape and np.array_equal(saved, items):
                    index = ItemIndex.load(run.item_faiss)
                    if (index.size == items.shape[0] and index.index.d == items.shape[1] + 1
                            and index.exact == (items.shape[0] <= exact_items)):
                        return cls(index)
            except Exception as exc:  # noqa: BLE001 - a damaged saved index is rebuilt, not fatal
                log.warning("%s: not usable (%s); building the item index again", run.item_faiss, exc)
        return cls.build(items, exact_items)

    @property
    def exact(self) -> bool:
        return self.index.exact

    def candidates(self, user_vectors: np.ndarray, count: int) -> np.ndarray:
        """(B, count) item indices best first by u . x_j, -1 where the index found fewer."""
        return self.index.search(lift_queries(user_vectors), count)[1]


_PREPARE_LOCK = threading.Lock()


def ranking_order(user_index: pd.DataFrame, history_users: np.ndarray) -> np.ndarray:
    """Every user with history (``history_users``, distinct ids): model users (``user_index``) in index order, then
    the rest sorted by id — the order of the rank stage's blocks."""
    model_users = user_index.sort_values(schema.USER_INDEX)[schema.USER]
    modelled = pd.Series(history_users).isin(user_index[schema.USER]).to_numpy()
    rest = pd.Series(history_users[~modelled]).sort_values(kind="stable")
    return pd.concat([model_users, rest], ignore_index=True).to_numpy()


@dataclass
class Recommender:
    """What a trained run needs to rank any user: the scorer, the id tables, the history and the exclusions.

    Attributes:
        scorer: the run's final scorer over U model users and I items.
        user_index / item_index: (original id, contiguous index) tables of the model.
        history_users: (H,) ids of every user with history in the log (k-core survivors or not).
        excluded: (user_id, item_id) pairs never ranked when ``exclude_seen``.
        popularity: (I,) training users per item, the fallback ranking.
        item_search: when set, model users are ranked from its candidates (module docstring), else every item
            is scored.
        overfetch: candidates fetched per wanted item with ``item_search``.
    """

    scorer: Scorer
    user_index: pd.DataFrame
    item_index: pd.DataFrame
    history_users: np.ndarray
    excluded: pd.DataFrame
    popularity: torch.Tensor
    device: torch.device | str = "cpu"
    batch_size: int = 4096
    item_search: ItemSearch | None = None
    overfetch: int = 4
    _model_row: pd.Index | None = field(default=None, repr=False)  # user ids in user_index row order
    _history: pd.Index | None = field(default=None, repr=False)
    _exclusions: CSRIndex | None = field(default=None, repr=False)  # history position -> excluded item indices
    _item_ids: np.ndarray | None = field(default=None, repr=False)  # item id of each item index
    _score_fn: ScoreFn | None = field(default=None, repr=False)
    _dot: DotTopK | None = field(default=None, repr=False)  # a dot-product scorer's exact search (CPU)

    @classmethod
    def from_run(cls, run: RunDir, exclude_event_types: list[str], device: torch.device | str = "cpu",
                 batch_size: int = 4096) -> Recommender:
        scorer = Scorer.load(require(run.scorer, "train"))
        history_users, excluded = read_history(run, exclude_event_types)
        popularity = item_popularity(read_edges(run, [schema.ITEM_INDEX], splits=["train"]), scorer.num_items)
        return cls(scorer, pd.read_parquet(require(run.user_index, "etl")),
                   pd.read_parquet(require(run.item_index, "etl")), history_users, excluded, popularity, device,
                   batch_size)

    @classmethod
    def for_run(cls, run: RunDir, rank: RankConfig, device: torch.device | str = "cpu") -> Recommender:
        """`from_run` with the ``rank`` settings; from ``rank.index_min_items`` items on, ranking goes through the
        item index (the run's saved one when it matches the scorer, else a new one)."""
        recommender = cls.from_run(run, rank.exclude_event_types, device, rank.batch_size)
        recommender.overfetch = rank.index_overfetch
        if recommender.scorer.num_items >= rank.index_min_items:
            recommender.item_search = ItemSearch.for_run(run, recommender.scorer, rank.index_exact_items)
        return recommender

    def all_users(self) -> np.ndarray:
        """Every user with history: model users in index order, then the rest sorted by id (the rank stage)."""
        return ranking_order(self.user_index, self.history_users)

    def allowed_items(self, user_ids: np.ndarray) -> np.ndarray:
        """(len(user_ids),) how many items may be ranked for each user: every item of the model less the user's
        excluded ones (``excluded`` pairs whose item the model knows)."""
        self._prepare()
        assert self._history is not None and self._exclusions is not None
        position = self._history.get_indexer(pd.Index(user_ids))
        counts = self._exclusions.counts().numpy()
        return self.scorer.num_items - np.where(position >= 0, counts[np.maximum(position, 0)], 0)

    def _prepare(self) -> None:
        """Id lookups and the exclusion lists, built once per recommender (every block reuses them). Thread-safe:
        threads of one dask worker share a recommender, and only a complete preparation is published."""
        if self._model_row is not None:
            return
        with _PREPARE_LOCK:
            if self._model_row is not None:
                return
            history = pd.Index(self.history_users)
            ordered = self.item_index.sort_values(schema.ITEM_INDEX)
            pairs = self.excluded.merge(self.item_index[[schema.ITEM, schema.ITEM_INDEX]], on=schema.ITEM)
            position = history.get_indexer(pairs[schema.USER])
            keep = position >= 0
            self._exclusions = CSRIndex.from_pairs(position[keep], pairs[schema.ITEM_INDEX].to_numpy()[keep],
                                                   len(history), self.scorer.num_items)
            self._history, self._item_ids = history, ordered[schema.ITEM].to_numpy()
            if searches_exactly(self.scorer, self.device):  # the plain dot product on the CPU
                self._dot = DotTopK(self.scorer.item_embeddings)
            self._model_row = pd.Index(self.user_index[schema.USER])  # last: the flag that all of it is there

    def recommend(self, user_ids: Iterable, k: int, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-``k`` items per requested user (duplicates answered once, in the order asked), as rows of
        user_id, rank (1..k), item_id, score and source. A user left with fewer than ``k`` allowed items gets
        fewer rows. Work is vectorised over the users asked for (the rank stage asks one block at a time)."""
        self._prepare()
        assert self._model_row is not None and self._history is not None
        run_dtype = self.user_index[schema.USER].dtype
        given = user_ids if isinstance(user_ids, (np.ndarray, pd.Series, pd.Index)) else list(user_ids)
        values = pd.Series(given)
        if values.dtype != run_dtype:  # ids from a caller: one canonical form per value (few of them)
            as_id = _integer_id if pd.api.types.is_integer_dtype(run_dtype) else str
            values = values.astype(object).map(as_id)
        requested = pd.Series(pd.unique(values))  # first occurrence order
        position = self._model_row.get_indexer(requested)
        in_model = position >= 0
        history = self._history.get_indexer(requested)
        known = history >= 0
        frame = pd.DataFrame({schema.USER: requested.to_numpy(dtype=object),
                              "source": np.where(in_model, MODEL, np.where(known, NO_TRAINING_HISTORY, UNKNOWN_USER)),
                              "position": np.arange(len(requested)), "history": history})
        model_rows = self.user_index[schema.USER_INDEX].to_numpy()[position[in_model]]
        k = min(k, self.scorer.num_items)
        parts = []
        if in_model.any():
            parts.append(self._rank(frame[in_model], model_rows.astype(np.int64), k, exclude_seen, model=True))
        if (~in_model).any():
            parts.append(self._rank(frame[~in_model], None, k, exclude_seen, model=False))
        columns = [*RANKING_COLUMNS, "source"]
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        if len(parts) > 1:
            order = np.lexsort((out["rank"].to_numpy(), out["position"].to_numpy()))
            out = out.iloc[order]
        out = out[columns].reset_index(drop=True)  # one part: already in asked order, rank 1..k per user
        if len(out) and (out["source"] != UNKNOWN_USER).all():
            out["user_id"] = out["user_id"].astype(run_dtype)
        return out

    def _rank(self, users: pd.DataFrame, rows: np.ndarray | None, k: int, exclude_seen: bool,
              model: bool) -> pd.DataFrame:
        """Top-k for ``users`` (in the order given): model users (score rows ``rows``) by the scorer, the others
        by popularity; their excluded items masked."""
        count = len(users)
        exclude = None
        if exclude_seen:  # the unknown (history -1) have nothing to exclude
            assert self._exclusions is not None
            history = users["history"].to_numpy()
            local = np.flatnonzero(history >= 0)
            owner, items = self._exclusions.pairs(torch.from_numpy(history[local].astype(np.int64)))
            exclude = CSRIndex.from_pairs(local[owner.numpy()], items.numpy(), count, self.scorer.num_items)
        if model:
            assert rows is not None
            items, scores = (self._retrieve(rows, exclude, k) if self.item_search is not None else
                             self._exact(self._model_scores(), rows, exclude, k))
        else:
            items, scores = popularity_top_k(self.popularity, torch.arange(count), k, exclude, self.batch_size)
        width = items.shape[1]
        assert self._item_ids is not None
        frame = pd.DataFrame({
            "user_id": np.repeat(users[schema.USER].to_numpy(), width),
            "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), count),
            "item_id": self._item_ids[items.numpy().ravel()],
            "score": scores.numpy().ravel().astype(np.float32),
            "source": np.repeat(users["source"].to_numpy(), width),
            "position": np.repeat(users["position"].to_numpy(), width),
        })
        return frame[torch.isfinite(scores).numpy().ravel()]

    def _model_scores(self) -> ScoreFn:
        """The scorer's full (B, I) scores with its operands on the device, made once."""
        if self._score_fn is None:
            self._score_fn = self.scorer.score_fn(self.device)
        return self._score_fn

    def _exact(self, full: ScoreFn, rows: np.ndarray, exclude: CSRIndex | None,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of every item by ``full`` for the users whose score rows are ``rows``; ``exclude`` is indexed by
        position in ``rows``. A dot-product scorer on the CPU goes through faiss's exact search instead of (B, I)
        blocks (`homerank.gnn.dot_top_k`)."""
        score_rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        if self._dot is not None:
            return self._dot(self.scorer.user_embeddings[score_rows], torch.arange(len(rows)), k, exclude,
                             self.batch_size)

        def score_fn(batch: torch.Tensor) -> torch.Tensor:  # positions in rows -> those users' score rows
            return full(score_rows[batch.cpu()].to(self.device))

        return top_k(score_fn, torch.arange(len(rows)), k, exclude, self.batch_size, self.device)

    def _retrieve(self, rows: np.ndarray, exclude: CSRIndex | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items and exact scores, shapes (len(rows), k), from the item index's candidates (module
        docstring): each user of a batch gets overfetch * k candidates plus the largest number of excluded items of
        a user in the batch, so at least overfetch * k allowed candidates remain when the index returns all it is
        asked for. A user left with fewer than min(k, allowed items) candidates (an approximate index that came
        back short) is scored over every item instead. -inf scores fill the tail of a user with fewer allowed."""
        assert self.item_search is not None
        num_items = self.scorer.num_items
        k = min(k, num_items)
        counts = exclude.counts() if exclude is not None else torch.zeros(len(rows), dtype=torch.long)
        excluded_keys = exclude.keys() if exclude is not None else torch.empty(0, dtype=torch.long)
        user_vectors = self.scorer.user_embeddings
        items_out, scores_out = [], []
        for start in range(0, len(rows), self.batch_size):
            local = torch.arange(start, min(start + self.batch_size, len(rows)))
            batch = torch.from_numpy(rows[start : start + self.batch_size])
            fetch = min(num_items, k * self.overfetch + int(counts[local].max()))
            found = torch.from_numpy(self.item_search.candidates(user_vectors[batch].numpy(), fetch))
            candidates = found.clamp_min(0)
            scores = self._candidate_scores(batch, candidates).float().cpu()
            scores[found < 0] = -torch.inf
            scores[is_member(excluded_keys, local.view(-1, 1) * num_items + candidates)] = -torch.inf
            values, order = torch.topk(scores, k, dim=1)
            items_out.append(candidates.gather(1, order))
            scores_out.append(values)
        if not items_out:
            return torch.empty(0, k, dtype=torch.long), torch.empty(0, k)
        items, scores = torch.cat(items_out), torch.cat(scores_out)
        short = torch.isfinite(scores).sum(1) < torch.clamp(num_items - counts, max=k)
        if short.any():
            log.info("item index: %d of %d users had too few candidates; scored over every item", int(short.sum()),
                     len(rows))
            which = torch.nonzero(short).flatten()
            again = None
            if exclude is not None:  # indexed by position in ``which``
                owner, excluded = exclude.pairs(which)
                again = CSRIndex.from_pairs(owner.numpy(), excluded.numpy(), len(which), num_items)
            items[which], scores[which] = self._exact(self._model_scores(), rows[which.numpy()], again, k)
        return items, scores

    def _candidate_scores(self, rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The scorer's exact scores of ``candidates`` (B, C) for users ``rows`` (B,): E_u . E_j for LightGCN
        alone, else the blend's full (B, I) row gathered (its z-scores need the whole row)."""
        if self.scorer.kind == "lightgcn":
            users = self.scorer.user_embeddings[rows].to(self.device)
            items = self.scorer.item_embeddings[candidates].to(self.device)  # (B, C, d)
            return torch.bmm(items, users.unsqueeze(2)).squeeze(2)
        return self._model_scores()(rows.to(self.device)).gather(1, candidates.to(self.device))


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
