"""Item content in the model: catalogue features projected into LightGCN's layer-0 item table.

Features. Item i of the catalogue gets x_i, the concatenation of the blocks named in ``train.content.features``
(`homerank.gnn.config.ContentConfig`), in this order:

    text      (T,)     unit vector of "title. category. description" (`homerank.gnn.text_features`), T = text_dim
    category  (C,)     one-hot of the item's category among the catalogue's C categories (sorted by name);
                       an item without a category gets a zero block
    price     (B + 1,) one-hot of the price band b_i in 0..B-1, then z_i = (ln(1 + p_i) - mu) / sigma
                       (mu, sigma over the catalogue's priced items); an item without a price gets zeros.
                       The bands are the B price quantiles of the catalogue, b_i = floor(B * rank_i / n_priced)
                       with rank_i in 0..n_priced-1 (ties by catalogue order), as the homepage's quartiles

so X = [x_1; ...; x_n] is (n, F) float32 with F = T + C + B + 1 when all three blocks are on.

Projection. With the ID table e (N, d) of `homerank.gnn.model.LightGCNRecommender` and W (F, d) learned
(`ContentProjection`), layer 0 of the graph's items i = 0..I-1 is

    E^(0)_{U+i} = m_i e_{U+i} + x_i W        m_i = 1[item i has training pairs]

Users keep E^(0)_u = e_u. Propagation and scores are LightGCN's: E = sum_l alpha_l A_hat^l E^(0),
score(u, i) = <E_u, E_{U+i}>.

Cold items. An item outside the graph is an isolated node: A_hat has no entry in its row, so A_hat^l E^(0)
is zero there for l >= 1 and its final embedding is its *cold embedding* c_i = alpha_0 x_i W = x_i W / (L + 1)
(`LightGCNRecommender.cold_item_embeddings`), scored against the same final user embeddings. Items of the graph
without training pairs (m_i = 0) get x_i W at layer 0 and whatever their validation edges propagate in the
final (train + valid) graph.

ID dropout (DropoutNet, Volkovs et al. 2017). With ``id_dropout`` p > 0, at every training step each graph item
is drawn cold with probability p (k_i ~ Bernoulli(p), one draw per item and step, the same on every rank), and
the loss scores it with c_i instead of E_{U+i}, positives and negatives alike:

    s(u, i) = <E_u, k_i c_i + (1 - k_i) E_{U+i}>

so W learns to score items from their content alone, at the scale the cold items are scored with. Layer 0 and
the propagation are not changed by the draws; outside training k_i = 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from homerank.engine.errors import HomerankError
from homerank.engine.schema import ITEM
from homerank.gnn.config import ContentConfig
from homerank.gnn.text_features import features_from_config

log = logging.getLogger(__name__)


@dataclass
class ItemFeatures:
    """Content features of catalogue items, row for row.

    Attributes:
        item_ids: (n,) the catalogue's item ids, in catalogue order.
        matrix: (n, F) float32, x_i per row (module docstring).
        blocks: feature block name -> (first column, end column) in ``matrix``.
        categories: the C category names of the category block, in column order.
    """

    item_ids: np.ndarray
    matrix: np.ndarray
    blocks: dict[str, tuple[int, int]] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        """F, the width of x_i."""
        return int(self.matrix.shape[1])


def price_bands(price: pd.Series, bands: int) -> np.ndarray:
    """(n,) int64 band 0..bands-1 of each price by its quantile among the priced items, -1 without a price:
    b_i = floor(bands * rank_i / n_priced), rank_i = 0..n_priced-1 in price order (ties: catalogue order)."""
    price = pd.to_numeric(price, errors="coerce").reset_index(drop=True)
    out = np.full(len(price), -1, dtype=np.int64)
    priced = price.notna().to_numpy()
    n_priced = int(priced.sum())
    if n_priced:
        rank = price[priced].rank(method="first").to_numpy().astype(np.int64) - 1
        out[priced] = np.minimum(bands * rank // n_priced, bands - 1)
    return out


def item_features(catalogue: pd.DataFrame, config: ContentConfig, device: str | torch.device = "cpu"
                  ) -> ItemFeatures:
    """x_i for every row of ``catalogue`` (item_id plus title / category / description / price as the blocks
    need them): see the module docstring. A block whose column is missing is a `HomerankError`."""
    if not config.enabled:
        raise HomerankError("train.content.features is empty: no content features to build")
    if hasattr(catalogue, "to_pandas"):  # cuDF: the features are built on the host
        catalogue = catalogue.to_pandas()
    catalogue = catalogue.reset_index(drop=True)
    if ITEM not in catalogue.columns:
        raise HomerankError(f"catalogue: train.content needs the column {ITEM} (found: "
                            f"{', '.join(map(str, catalogue.columns))})")
    parts: list[np.ndarray] = []
    blocks: dict[str, tuple[int, int]] = {}
    categories: list[str] = []
    width = 0
    for block in config.features:
        if block in ("category", "price") and block not in catalogue.columns:
            raise HomerankError(f"catalogue: train.content.features names {block!r} but the catalogue has no "
                                f"{block!r} column (found: {', '.join(map(str, catalogue.columns))}); add it or "
                                f"remove {block} from train.content.features")
        if block == "text":
            _, part = features_from_config(catalogue, config.text_features(), device)
        elif block == "category":
            names = catalogue["category"].astype("string")
            categories = sorted(names.dropna().unique().tolist())
            column = pd.Categorical(names, categories=categories).codes
            part = np.zeros((len(catalogue), len(categories)), dtype=np.float32)
            present = column >= 0
            part[np.flatnonzero(present), column[present]] = 1.0
        else:
            price = pd.to_numeric(catalogue["price"], errors="coerce")
            band = price_bands(price, config.price_bands)
            part = np.zeros((len(catalogue), config.price_bands + 1), dtype=np.float32)
            priced = band >= 0
            part[np.flatnonzero(priced), band[priced]] = 1.0
            log_price = np.log1p(price.clip(lower=0).to_numpy(dtype=np.float64))
            if priced.any():
                mu, sigma = log_price[priced].mean(), log_price[priced].std()
                part[priced, -1] = (log_price[priced] - mu) / (sigma if sigma > 0 else 1.0)
        parts.append(np.asarray(part, dtype=np.float32))
        blocks[block] = (width, width + part.shape[1])
        width += part.shape[1]
    matrix = np.concatenate(parts, axis=1) if parts else np.zeros((len(catalogue), 0), dtype=np.float32)
    log.info("content features: %d items x %d (%s)", matrix.shape[0], matrix.shape[1],
             ", ".join(f"{name} {stop - start}" for name, (start, stop) in blocks.items()))
    return ItemFeatures(catalogue[ITEM].to_numpy(), matrix, blocks, categories)


class ContentProjection(torch.nn.Module):
    """x (n, F) -> x W (n, d), W (F, d) without bias (an item with no features gets no content vector).

    W is initialised N(0, (0.1 / sqrt(#blocks))^2): every block of x_i has about unit norm, so x_i W starts
    at the scale of the ID embeddings (N(0, 0.1^2) entries)."""

    def __init__(self, num_features: int, embedding_dim: int, num_blocks: int = 1) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(num_features, embedding_dim, bias=False)
        torch.nn.init.normal_(self.linear.weight, std=0.1 / max(num_blocks, 1) ** 0.5)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)


@dataclass
class ContentInputs:
    """What the train stage feeds the model: ``graph_features`` (I, F) in item-index order (zero rows for
    graph items absent from the catalogue), and the catalogue items outside the graph, ``cold_ids`` (n_cold,)
    with their ``cold_features`` (n_cold, F)."""

    graph_features: Tensor
    cold_ids: pd.Series
    cold_features: Tensor
    missing_from_catalogue: int = 0


def split_by_graph(features: ItemFeatures, catalogue_ids: pd.Series, graph_item_ids: pd.Series,
                   graph_item_index: np.ndarray) -> ContentInputs:
    """Rows of ``features`` (for ``catalogue_ids``, already in the run's id form) placed at the graph's item
    indices (``graph_item_ids`` (I,) with their ``graph_item_index`` (I,)), the rest returned as cold items."""
    position = pd.Series(np.arange(len(catalogue_ids)), index=pd.Index(catalogue_ids))
    position = position[~position.index.duplicated()]
    rows = pd.Series(graph_item_ids).map(position).to_numpy()
    num_items = len(graph_item_ids)
    graph_features = np.zeros((num_items, features.dim), dtype=np.float32)
    found = ~pd.isna(rows)
    graph_features[np.asarray(graph_item_index)[found]] = features.matrix[rows[found].astype(np.int64)]
    in_graph = pd.Index(catalogue_ids).isin(pd.Index(graph_item_ids))
    first = ~pd.Index(catalogue_ids).duplicated()
    cold = ~in_graph & first
    return ContentInputs(torch.from_numpy(graph_features),
                         pd.Series(catalogue_ids)[cold].reset_index(drop=True),
                         torch.from_numpy(np.ascontiguousarray(features.matrix[cold])),
                         int((~found).sum()))
