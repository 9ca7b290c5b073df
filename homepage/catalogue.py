"""The catalogue as the homepage sees it: one row of facts per item (catalogue items and every item in the
log), and an item vector for every one of them, inductive for items the model never saw.

The vector of catalogue item i, v_i (d,), comes from the first source that has one (``VECTOR_SOURCES``):

    model                     e_i, the scorer's item embedding, for the model's items
    content                   x_i W / (L + 1), the content-only embedding the train stage wrote for a catalogue item
                              outside the graph (``RUN/train/cold_items.parquet``, with ``train.content``)
    category_price_band_mean  the mean e_j over the model items j of i's category and price band (else of its
                              category, else of all model items)

Trending is a recency-weighted interaction count over the last ``trending_window_days``:

    trending_i = sum over interactions (u, i) with last_ts >= t_ref - window of 0.5 ** (age_days / half_life)

where ``age_days = (t_ref - last_ts) / 86400 s``; popularity is the number of training users of the item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from homerank.engine import schema
from homerank.engine.errors import HomerankError
from homerank.engine.ids import canonical_ids
from homerank.engine.interactions import half_life_decay
from homerank.engine.split import SPLIT
from homerank.homepage.config import HomepageConfig


@dataclass
class Catalogue:
    """Item facts by catalogue position: every array has shape (C,), sorted by item id."""

    item_ids: np.ndarray
    category: np.ndarray
    title: np.ndarray
    in_stock: np.ndarray
    created_at: np.ndarray
    price_band: np.ndarray
    model_index: np.ndarray  # item_index in the model, -1 for items it never saw
    trending: np.ndarray  # recency-weighted interaction count
    popularity: np.ndarray  # distinct users in training

    def position(self) -> dict[Any, int]:
        """Item id -> catalogue position."""
        return {item: i for i, item in enumerate(self.item_ids.tolist())}


def run_item_ids(ids: pd.Series, run_ids: pd.Series) -> pd.Series:
    """Catalogue ``ids`` in the form and dtype of the run's item ids ``run_ids`` (int64 or strings): 500079,
    500079.0 and "500079" are one item. Raises HomerankError when an id cannot be one of the run's (text that is
    not a whole number in an int64 run, a null, a fraction)."""
    form = "int64" if pd.api.types.is_integer_dtype(run_ids.dtype) else "string"
    converted, bad = canonical_ids(ids, form)
    if bad.any():
        first = str(ids[bad].iloc[0])[:40]
        raise HomerankError(f"catalogue (ingest.catalogue): column {schema.ITEM!r}: {int(bad.sum())} id(s) cannot be "
                            f"this run's {form} item ids, the first {first!r}; the event log's item ids are {form} "
                            "(set ingest.id_dtype: string when ids are not all numbers)")
    return converted.astype(run_ids.dtype)


def build_catalogue(items: pd.DataFrame | None, interactions: pd.DataFrame, item_index: pd.DataFrame,
                    edges: pd.DataFrame, reference_time: pd.Timestamp, settings: HomepageConfig) -> Catalogue:
    """Merge the catalogue frame (``items``: item_id plus any of category, title, in_stock, created_at, price;
    None when the run has no catalogue) with the items of ``interactions``. Missing facts get defaults: category
    "Other", the id as title, no creation time, in stock only when the frame has no in_stock column at all;
    the price band is the price quartile 0..3 (-1 without a price, 0 for all when fewer than 4 items have one).
    ``reference_time`` is the newest event of the log, the "now" of trending. The catalogue's ids are converted to
    the run's id form (that of ``item_index``, see `homerank.engine.ingest.canonical_ids`) before merging."""
    if items is None:
        items = pd.DataFrame({schema.ITEM: interactions[schema.ITEM].unique()})
    else:
        items = items.assign(**{schema.ITEM: run_item_ids(items[schema.ITEM], item_index[schema.ITEM])})
    seen = pd.DataFrame({schema.ITEM: interactions[schema.ITEM].unique()})
    items = items.drop_duplicates(schema.ITEM).merge(seen, on=schema.ITEM, how="outer")
    items["category"] = items.get("category", pd.Series(index=items.index, dtype=object)).fillna("Other")
    titles = items.get("title", pd.Series(index=items.index, dtype=object))
    items["title"] = titles.fillna(items[schema.ITEM].astype(str))
    items["in_stock"] = items.get("in_stock", pd.Series(True, index=items.index)).fillna(False).astype(bool)
    created = pd.to_datetime(items.get("created_at", pd.Series(pd.NaT, index=items.index)), errors="coerce")
    items["created_at"] = created.astype("datetime64[ns]")
    price = pd.to_numeric(items.get("price", pd.Series(np.nan, index=items.index)), errors="coerce")
    items["price_band"] = pd.qcut(price.rank(method="first"), 4, labels=False) if price.notna().sum() >= 4 else 0
    items["price_band"] = items["price_band"].fillna(-1).astype(int)
    items = items.merge(item_index, on=schema.ITEM, how="left")
    window = pd.Timedelta(days=settings.trending_window_days)
    recent = interactions.loc[(interactions[schema.LAST_TS] >= reference_time - window).to_numpy(),
                              [schema.ITEM, schema.LAST_TS]]  # the two columns read, not copies of every column
    decay = half_life_decay(reference_time, recent[schema.LAST_TS], settings.trending_half_life_days)
    trend = decay.groupby(recent[schema.ITEM]).sum()
    del recent, decay
    model_items = int(item_index[schema.ITEM_INDEX].max()) + 1 if len(item_index) else 0
    popularity = train_edges_per_model_item(edges, item_index, minlength=model_items)
    items = items.sort_values(schema.ITEM, kind="stable").reset_index(drop=True)
    model_index = items[schema.ITEM_INDEX].fillna(-1).astype(np.int64).to_numpy()
    return Catalogue(
        item_ids=items[schema.ITEM].to_numpy(), category=items["category"].astype(str).to_numpy(),
        title=items["title"].astype(str).to_numpy(), in_stock=items["in_stock"].to_numpy(),
        created_at=items["created_at"].to_numpy(), price_band=items["price_band"].to_numpy(),
        model_index=model_index,
        trending=items[schema.ITEM].map(trend).fillna(0.0).to_numpy(dtype=np.float64),
        popularity=np.where(model_index >= 0, popularity[np.maximum(model_index, 0)] if popularity.size else 0,
                            0).astype(np.float64),
    )


POPULARITY_CHUNK = 1 << 22  # edges per piece of `train_edges_per_model_item`


def train_edges_per_model_item(edges: pd.DataFrame, item_index: pd.DataFrame | None = None,
                               chunk: int = POPULARITY_CHUNK, minlength: int = 0) -> np.ndarray:
    """(max(max model item index + 1, ``minlength``),) int64: the number of training edges of each model item,
    counted ``chunk`` edges at a time (one bincount per piece: no filtered copy of the training edges). The model
    item is the edges' ``item_index`` column, or, without it, the ``item_id`` looked up in ``item_index`` (item_id,
    item_index)."""
    by_id = schema.ITEM_INDEX not in edges
    items = edges[schema.ITEM if by_id else schema.ITEM_INDEX].to_numpy()
    if by_id:
        if item_index is None:
            raise ValueError("edges without item_index need the item index to count the training popularity")
        ids, model_items = pd.Index(item_index[schema.ITEM].to_numpy()), item_index[schema.ITEM_INDEX].to_numpy()
    train = (edges[SPLIT] == "train").to_numpy()
    counts = np.zeros(minlength, dtype=np.int64)
    for start in range(0, items.size, chunk):
        piece = items[start : start + chunk][train[start : start + chunk]]
        if by_id:
            found = ids.get_indexer(piece)
            if (found < 0).any():
                raise ValueError("a training edge's item is missing from the item index")
            piece = model_items[found]
        piece = piece.astype(np.int64, copy=False)
        found = np.bincount(piece, minlength=counts.size)
        found[: counts.size] += counts
        counts = found
    return counts


VECTOR_SOURCES = ("model", "content", "category_price_band_mean")  # item_vectors' source codes 0, 1, 2


def item_vectors(catalogue: Catalogue, item_embeddings: torch.Tensor,
                 cold_items: tuple[pd.Series, np.ndarray] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Embeddings for every catalogue item, shape (C, d), and the source of each (C,) int8, an index into
    ``VECTOR_SOURCES``: the model's row of ``item_embeddings`` (num_items, d) where it has one, else the item's row
    of ``cold_items`` (ids (n,) in the run's id form, content-only vectors (n, d); None without them), else the
    mean of the model items of the same (category, price band), else of the category, else of all model items.

    Raises HomerankError when the cold items' width is not the model's ``d``."""
    vectors = torch.zeros(len(catalogue.item_ids), item_embeddings.shape[1])
    known = catalogue.model_index >= 0
    vectors[torch.from_numpy(known)] = item_embeddings[torch.from_numpy(catalogue.model_index[known])]
    source = np.where(known, 0, 2).astype(np.int8)
    if cold_items is not None and len(cold_items[0]):
        ids, content = cold_items
        content = np.asarray(content, dtype=np.float32).reshape(len(ids), -1)
        if content.shape[1] != item_embeddings.shape[1]:
            raise HomerankError(f"train/cold_items.parquet: vectors of width {content.shape[1]}, the model's are "
                                f"{item_embeddings.shape[1]}; run the train stage again (`homerank train --out RUN`)")
        ids = pd.Index(ids)
        if not ids.is_unique:
            raise HomerankError("train/cold_items.parquet: an item id appears twice; run the train stage again "
                                "(`homerank train --out RUN`)")
        rows = ids.get_indexer(pd.Index(catalogue.item_ids))
        with_content = (rows >= 0) & ~known  # the model's own vector always wins
        vectors[torch.from_numpy(with_content)] = torch.from_numpy(content[rows[with_content]]).to(vectors.dtype)
        source[with_content] = 1
    _fill_means(catalogue, item_embeddings, vectors, known, np.flatnonzero(source == 2))
    return vectors, source


def inductive_item_vectors(catalogue: Catalogue, item_embeddings: torch.Tensor) -> torch.Tensor:
    """Embeddings for every catalogue item, shape (C, d) from ``item_embeddings`` (num_items, d): the model's
    where it has one, else the mean of the model items of the same (category, price band), else of the
    category, else of all model items (`item_vectors` without content vectors)."""
    return item_vectors(catalogue, item_embeddings)[0]


def _fill_means(catalogue: Catalogue, item_embeddings: torch.Tensor, vectors: torch.Tensor, known: np.ndarray,
                unknown: np.ndarray) -> None:
    """Write into ``vectors`` (C, d) at the positions ``unknown`` the mean vector of their (category, price band)
    over the model items (``known``), else of their category, else of all model items."""
    if not unknown.size:
        return
    global_mean = item_embeddings.mean(0)
    # one mean per (category, price band) of the unknown items, over the same model items as item by item
    model_items = np.flatnonzero(known)
    frame = pd.DataFrame({"category": catalogue.category[model_items], "band": catalogue.price_band[model_items]})
    by_category = frame.groupby("category").indices
    by_band = frame.groupby(["category", "band"]).indices
    unknown_frame = pd.DataFrame({"category": catalogue.category[unknown], "band": catalogue.price_band[unknown]})
    for (category, band), rows in unknown_frame.groupby(["category", "band"], sort=False).indices.items():
        members = by_band.get((category, band), by_category.get(category))
        mean = vectors[torch.from_numpy(model_items[members])].mean(0) if members is not None else global_mean
        vectors[torch.from_numpy(unknown[rows])] = mean
