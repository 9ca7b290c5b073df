"""Related to your searches: the catalogue items nearest, in the item text-feature space, to the user's recent queries.

Queries are embedded like titles (`homerank.gnn.text_features`, the encoder of ``homepage.search``; hashed TF-IDF
is fitted on the catalogue's texts, so queries and items share its idf). With x_i (T,) the unit text vector of
catalogue item i ("title. category"), the user's H newest queries q_1..q_H (newest first, H <= ``history``) with
unit vectors y_h and ages a_h = max(t_ref - ts(q_h), 0) in days:

    w_h = 0.5 ** (a_h / half_life_days),      p_u = sum_h w_h y_h / || sum_h w_h y_h ||          p_u: (T,)
    score(u, i) = cos(p_u, x_i) = p_u . x_i

and the section lists the ``candidates`` items of largest score (faiss, `homerank.gnn.item_index.ItemIndex`: exact
below 50,000 items, HNSW above), best first, keeping those with score > ``min_similarity``. Items the user bought are
left out by the page rules. A slot's explanation names the query most similar to its item, argmax_h y_h . x_i (ties:
the newer query).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.gnn.item_index import ItemIndex
from homerank.gnn.text_features import encode_texts, item_text, make_encoder
from homerank.homepage.catalogue import Catalogue
from homerank.homepage.config import SearchSectionConfig
from homerank.homepage.ragged import Ragged

log = logging.getLogger(__name__)

SEARCH_REASON = "related_to_searches:query_similarity"
SIMILARITY_CHUNK = 4096  # slots whose query vectors are gathered at once for the explanations: (chunk, H, T)


@dataclass
class SearchHistory:
    """The users who searched (K), their newest queries (Q in all, newest first per user; D distinct texts) and the
    items' text vectors (C, T) by catalogue position, with the index that finds the items nearest a user's query
    profile. Profiles are formed per block of users (`profiles`), so memory follows the block, not the users."""

    queries: Ragged  # users (K,) -> distinct-text row of each of their newest queries, newest first
    weights: np.ndarray  # (Q,) float32 w_h, aligned with queries.values
    text: np.ndarray  # (D,) object, the distinct queries as typed (stripped)
    vectors: np.ndarray  # (D, T) float32 unit query vectors
    item_vectors: np.ndarray  # (C, T) float32 unit x_i
    index: ItemIndex
    candidates: int
    min_similarity: float

    def profiles(self, rows: np.ndarray) -> np.ndarray:
        """p_u (module docstring) of the query lists ``rows`` (n,) (each >= 0): (n, T) float32 unit rows, zero where
        no query has a word the encoder knows."""
        texts = self.queries.padded(rows)  # (n, H) distinct-text rows, -1 past each list
        width = texts.shape[1]
        weights = np.where(texts >= 0, self.weights[np.minimum(
            self.queries.start[rows][:, None] + np.arange(width)[None, :], max(self.weights.size - 1, 0))], 0.0)
        summed = np.einsum("nh,nhd->nd", weights.astype(np.float32), self.vectors[np.maximum(texts, 0)])
        norms = np.linalg.norm(summed, axis=1, keepdims=True)
        return np.where(norms > 0, summed / np.maximum(norms, 1e-12), 0.0).astype(np.float32)

    def candidates_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a block of ``users`` (B,): the nearest items of those who searched, (positions (G, k), scores (G, k)),
        padded with -1 / 0 past each list, and each block row's line of them (B,), -1 for users without searches
        (or whose queries share no word with the catalogue)."""
        rows = self.queries.rows(users)
        known = rows >= 0
        profiles = self.profiles(rows[known])
        nonzero = np.abs(profiles).sum(axis=1) > 0
        known[known] = nonzero
        profiles = profiles[nonzero]
        group = np.full(len(users), -1, dtype=np.int64)
        group[known] = np.arange(int(known.sum()))
        k = min(self.candidates, self.item_vectors.shape[0])
        if not known.any() or k == 0:
            return np.full((0, 1), -1, dtype=np.int64), np.zeros((0, 1)), group
        scores, positions = self.index.search(profiles, k)
        keep = (positions >= 0) & (scores > self.min_similarity)
        keep &= np.cumprod(keep, axis=1).astype(bool)  # best first: nothing after the first item dropped
        return np.where(keep, positions, -1), np.where(keep, scores, 0.0).astype(np.float64), group

    def newest_query(self, users: np.ndarray) -> np.ndarray:
        """Each user's newest query (B,) object, "" for users without searches."""
        rows = self.queries.rows(users)
        out = np.full(len(users), "", dtype=object)
        has = rows >= 0
        out[has] = self.text[self.queries.values[self.queries.start[rows[has]]]]
        return out

    def best_query(self, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """For slots (user (n,), catalogue position (n,)): the row in ``text`` of the user's query most similar to the
        slot's item, argmax_h y_h . x_i (the newest on ties), -1 when the user has no searches."""
        best = np.full(len(users), -1, dtype=np.int64)
        rows = self.queries.rows(users)
        for start in range(0, len(users), SIMILARITY_CHUNK):
            chunk = np.arange(start, min(start + SIMILARITY_CHUNK, len(users)))
            chunk = chunk[rows[chunk] >= 0]
            if not chunk.size:
                continue
            texts = self.queries.padded(rows[chunk])  # (n, H) distinct-text rows, -1 past each list
            similarity = np.einsum("nhd,nd->nh", self.vectors[np.maximum(texts, 0)],
                                   self.item_vectors[positions[chunk]])
            similarity = np.where(texts >= 0, similarity, -np.inf)
            best[chunk] = texts[np.arange(chunk.size), np.argmax(similarity, axis=1)]
        return best


def _text_frame(catalogue: Catalogue) -> pd.DataFrame:
    """The catalogue's texts by position: its title and category."""
    return pd.DataFrame({"title": catalogue.title, "category": catalogue.category})


def search_history(searches: pd.DataFrame | None, catalogue: Catalogue, reference_time: pd.Timestamp,
                   settings: SearchSectionConfig, device: Any = "cpu") -> SearchHistory | None:
    """The `SearchHistory` of ``searches`` (user_id, timestamp, query; any order; None or empty: no history) against
    the catalogue's items, with the encoder and weights of ``settings`` (module docstring). Each distinct query text
is embedded once; the users' profiles p_u are formed per block (`SearchHistory.profiles`)."""
    if searches is None or not len(searches) or not len(catalogue.item_ids):
        return None
    config = settings.text_features()
    texts = item_text(_text_frame(catalogue))
    encoder = make_encoder(config.encoder, dim=config.dim, device=device, texts=texts, cache_dir=config.cache_dir,
                           hash_features=config.hash_features, seed=config.seed)
    item_vectors, hits, encoded = encode_texts(texts, encoder, config.cache_dir, config.batch_size)
    # each user's `history` newest queries, newest first, users in id order
    recent = searches[[schema.USER, schema.TS, schema.QUERY]].sort_values(
        [schema.USER, schema.TS], ascending=[True, False], kind="stable")
    recent = recent[recent.groupby(schema.USER, sort=False).cumcount() < settings.history].reset_index(drop=True)
    codes, text = pd.factorize(recent[schema.QUERY].astype(str))  # each distinct query embedded once
    text = np.asarray(text, dtype=object)
    vectors, query_hits, query_encoded = encode_texts(list(text), encoder, config.cache_dir, config.batch_size)
    queries = Ragged.of(recent[schema.USER].to_numpy(), codes.astype(np.int64))
    age = (reference_time - recent[schema.TS]) / pd.Timedelta(days=1)
    weights = (0.5 ** (np.maximum(age.to_numpy(dtype=np.float64), 0.0) / settings.half_life_days)).astype(np.float32)
    index = ItemIndex().build(item_vectors)
    log.info("homepage: %d queries (%d distinct) of %d users embedded with %s (dim %d; items %d cached, %d encoded; "
             "queries %d cached, %d encoded)", len(recent), len(text), len(queries.users), encoder.name, encoder.dim,
             hits, encoded, query_hits, query_encoded)
    return SearchHistory(queries, weights, text, vectors, item_vectors, index, settings.candidates,
                         settings.min_similarity)
