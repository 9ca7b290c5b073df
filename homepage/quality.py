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
    """Each page's share of different-category pairs, 1 - sum_c n_c (n_c - 1) / (n (n - 1)), for pages of n > 1
    (`page_diversity` of the slots' users and categories; items ``category_of`` does not know have no category)."""
    codes, _ = pd.factorize(pages["item_id"].map(category_of), use_na_sentinel=True)
    return page_diversity(pages["user_id"].to_numpy(), codes)


def page_diversity(users: np.ndarray, category_codes: np.ndarray) -> pd.Series:
    """Per page (the slots of one user: ``users`` (n,)), with ``category_codes`` (n,) each slot's category code (-1:
    none), the share of different-category pairs 1 - sum_c n_c (n_c - 1) / (n (n - 1)), n the page's slots and n_c
    those of category c; a Series by user id in ascending order, for the pages of n > 1 with some slot of a known
    category. Array operations only (one factorisation of the users, a sort of (user, category) keys): the quality
    metrics run it over the rank stage's parts of 10^6 rows, where a group-by of the category names held 0.2 GB."""
    users = np.asarray(users)
    category_codes = np.asarray(category_codes, dtype=np.int64)
    if not users.size:
        return pd.Series(dtype=np.float64)
    user_codes, user_ids = pd.factorize(users, sort=True)
    sizes = np.bincount(user_codes, minlength=len(user_ids))
    known = category_codes >= 0
    width = int(category_codes.max()) + 1 if known.any() else 1
    keys, n_c = np.unique(user_codes[known].astype(np.int64) * width + category_codes[known], return_counts=True)
    same = np.bincount(keys // width, weights=n_c * (n_c - 1), minlength=len(user_ids))  # integers, exact in float64
    valid = (np.bincount(user_codes[known], minlength=len(user_ids)) > 0) & (sizes > 1)
    n = sizes[valid]
    return pd.Series(1 - same[valid].astype(np.int64) / (n * (n - 1)), index=pd.Index(user_ids[valid]))


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
    category_codes = pd.factorize(np.asarray(category), use_na_sentinel=True)[0]  # by catalogue position
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
        codes = np.where(known, category_codes[np.maximum(positions, 0)], -1)
        per_user = page_diversity(frame["user_id"].to_numpy(), codes)
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
    ideal_of = np.array([(1 / np.log2(np.arange(2, n + 2))).sum() for n in range(length + 1)])  # by min(|T_u|, L)
    ideal = ideal_of[per_user["n_truth"].clip(upper=length).to_numpy(dtype=np.int64)]
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
