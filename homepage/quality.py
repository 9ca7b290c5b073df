"""Page-quality metrics of the homepage next to a plain top-K baseline (``rankings/``).

For a set of pages (one list of items per user), with C catalogue items, exposure counts x_i and training
popularity p_i over U users:

    coverage      = |distinct items shown| / C
    diversity     = mean over users of the share of item pairs on the page from different categories (ILD)
    novelty       = mean over shown items of -log2((p_i + 1) / (U + 1))          (self-information, bits)
    gini          = Gini coefficient of x_i over all C items (0 = even exposure, 1 = one item gets it all)
    cold_share    = share of shown slots holding items the model never trained on
and the offline accuracy of the ``for_you`` row: Recall/NDCG at its length against each user's test items.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.split import SPLIT


def gini(exposure: np.ndarray) -> float:
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    if x.size == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, x.size + 1)
    return float((2 * (ranks * x).sum()) / (x.size * x.sum()) - (x.size + 1) / x.size)


def diversity_per_user(pages: pd.DataFrame, category_of: pd.Series) -> pd.Series:
    """Each page's share of different-category pairs, 1 - sum_c n_c (n_c - 1) / (n (n - 1)), for pages of n > 1."""
    frame = pages.assign(category=pages["item_id"].map(category_of))
    counts = frame.groupby(["user_id", "category"]).size().rename("n_c").reset_index()
    sizes = frame.groupby("user_id").size()
    same = (counts["n_c"] * (counts["n_c"] - 1)).groupby(counts["user_id"]).sum()
    n = sizes.loc[same.index]
    valid = n > 1
    return 1 - same[valid] / (n[valid] * (n[valid] - 1))


def intra_list_diversity(pages: pd.DataFrame, category_of: pd.Series) -> float:
    """Mean share of different-category pairs per page: 1 - sum_c n_c (n_c - 1) / (n (n - 1))."""
    per_user = diversity_per_user(pages, category_of)
    return float(per_user.mean()) if len(per_user) else 0.0


def exposure_metrics(exposure: np.ndarray, diversity_sum: float, diversity_pages: int, popularity: np.ndarray,
                     model_index: np.ndarray, num_users: int) -> dict[str, float]:
    """The list metrics from sums that add up over blocks of users: ``exposure`` (C,) slots per catalogue item,
    the summed per-page diversity over ``diversity_pages`` pages (see `diversity_per_user`); novelty is the
    exposure-weighted mean of -log2((p_i + 1) / (U + 1)), cold share the exposure share of items without a model
    index (C,)."""
    slots = int(exposure.sum())
    novelty = -np.log2((np.asarray(popularity, dtype=np.float64) + 1) / (num_users + 1))
    return {
        "slots": slots,
        "coverage": float((exposure > 0).sum() / max(exposure.size, 1)),
        "diversity": float(diversity_sum / diversity_pages) if diversity_pages else 0.0,
        "novelty_bits": float((exposure * novelty).sum() / slots) if slots else 0.0,
        "gini": gini(exposure),
        "cold_share": float(exposure[model_index < 0].sum() / slots) if slots else 0.0,
    }


def list_metrics(pages: pd.DataFrame | Iterable[pd.DataFrame], item_ids: np.ndarray, category: np.ndarray,
                 popularity: np.ndarray, model_index: np.ndarray, num_users: int) -> dict[str, float]:
    """The list metrics (module docstring) of ``pages`` (user_id, item_id): one frame, or frames read one at a
    time, each holding whole lists (e.g. the rank stage's parts, users in blocks), so that no more than one part is
    ever held. Items outside ``item_ids`` count as slots (novelty of an item nobody trained on, cold) but not in the
    exposure. Sums per part: exposure (C,), per-page diversity, novelty, cold slots."""
    frames = [pages] if isinstance(pages, pd.DataFrame) else pages
    index = pd.Index(item_ids)
    category_of = pd.Series(category, index=item_ids)
    popularity = np.asarray(popularity, dtype=np.float64)
    exposure = np.zeros(len(item_ids), dtype=np.int64)
    slots = cold = diversity_pages = 0
    novelty = diversity_sum = 0.0
    for frame in frames:
        positions = index.get_indexer(frame["item_id"])
        known = positions >= 0
        exposure += np.bincount(positions[known], minlength=len(item_ids))
        slots += len(frame)
        shown_popularity = np.where(known, popularity[np.maximum(positions, 0)], 0.0)
        novelty += float(-np.log2((shown_popularity + 1) / (num_users + 1)).sum())
        cold += int((~known | (np.asarray(model_index)[np.maximum(positions, 0)] < 0)).sum())
        per_user = diversity_per_user(frame[["user_id", "item_id"]], category_of)
        diversity_sum += float(per_user.sum())
        diversity_pages += len(per_user)
    return {
        "slots": slots,
        "coverage": float((exposure > 0).sum() / max(len(item_ids), 1)),
        "diversity": diversity_sum / diversity_pages if diversity_pages else 0.0,
        "novelty_bits": novelty / slots if slots else 0.0,
        "gini": gini(exposure),
        "cold_share": cold / slots if slots else 0.0,
    }


def for_you_hits(page: pd.DataFrame, edges: pd.DataFrame) -> pd.DataFrame:
    """Per user with test items T_u and a for_you row: hits |{s : r_s in T_u}|, dcg sum_{s : r_s in T_u}
    1 / log2(s + 1) and n_truth |T_u| (columns; index user_id). ``edges`` may hold other users' edges too."""
    test = edges[edges[SPLIT] == "test"][[schema.USER, schema.ITEM]].assign(relevant=True)
    row = page[page["section"] == "for_you"][["user_id", "slot", "item_id"]]
    if row.empty or test.empty:
        return pd.DataFrame({"hits": [], "dcg": [], "n_truth": []})
    hits = row.merge(test, left_on=["user_id", "item_id"], right_on=[schema.USER, schema.ITEM], how="left")
    hits["relevant"] = hits["relevant"].fillna(False).astype(bool)
    hits["gain"] = hits["relevant"].astype(float) / np.log2(hits["slot"] + 1)
    truth = test.groupby(schema.USER).size()
    per_user = hits.groupby("user_id").agg(hits=("relevant", "sum"), dcg=("gain", "sum"))
    return per_user.join(truth.rename("n_truth"), how="inner")


def for_you_summary(per_user: pd.DataFrame, length: int) -> dict[str, float]:
    """Recall and NDCG at ``length`` (the for_you row's largest slot) averaged over `for_you_hits` rows:
    ideal DCG = sum_{s=1}^{min(|T_u|, length)} 1 / log2(s + 1)."""
    ideal = per_user["n_truth"].clip(upper=length).map(lambda n: (1 / np.log2(np.arange(2, n + 2))).sum())
    return {f"recall@{length}": float((per_user["hits"] / per_user["n_truth"]).mean()),
            f"ndcg@{length}": float((per_user["dcg"] / ideal).mean()), "users": int(len(per_user))}


def for_you_accuracy(page: pd.DataFrame, edges: pd.DataFrame) -> dict[str, float]:
    """Recall and NDCG of the for_you row (at its own length L, its largest slot) against the test items
    (LightGCN protocol), averaged over users with test items T_u and a for_you row r_1..r_L:

        recall@L = |{s : r_s in T_u}| / |T_u|
        ndcg@L   = sum_{s : r_s in T_u} 1 / log2(s + 1)  /  sum_{s=1}^{min(|T_u|, L)} 1 / log2(s + 1)
    """
    row = page[page["section"] == "for_you"]
    if row.empty or not (edges[SPLIT] == "test").any():
        return {}
    return for_you_summary(for_you_hits(page, edges), int(row["slot"].max()))


def page_quality(page: pd.DataFrame, rankings: pd.DataFrame | None, item_ids: np.ndarray, category: np.ndarray,
                 popularity: np.ndarray, model_index: np.ndarray, edges: pd.DataFrame) -> dict[str, Any]:
    """The list metrics of the homepage (and of ``rankings``, the plain top-K baseline, when given) and the
    for_you row's accuracy. Catalogue arrays are aligned by position, each of shape (C,)."""
    num_users = int(page["user_id"].nunique())
    out: dict[str, Any] = {"homepage": list_metrics(page, item_ids, category, popularity, model_index, num_users)}
    if rankings is not None:
        out["top_k_baseline"] = list_metrics(rankings, item_ids, category, popularity, model_index, num_users)
    out["for_you_accuracy"] = for_you_accuracy(page, edges)
    return out
