"""Frames and arrays in, pages out: the catalogue, the page-wide signals, every user's rows in section order, then
the page-rule check and the page-quality metrics over the whole output."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from homerank.engine import schema
from homerank.homepage.catalogue import Catalogue, build_catalogue, inductive_item_vectors
from homerank.homepage.config import HomepageConfig
from homerank.homepage.merchandising import Merchandising, load_merchandising
from homerank.homepage.quality import page_quality
from homerank.homepage.rows import PAGE_COLUMNS, PageBuilder
from homerank.homepage.rules import check_page_rules
from homerank.homepage.sections import SECTION_KINDS, section_title
from homerank.homepage.signals import PageSignals, collect_signals

log = logging.getLogger(__name__)


@dataclass
class Homepage:
    """``page``: one row per slot (``PAGE_COLUMNS``), grouped by user, rows in section order; ``stats``: what
    ``homepage_stats.json`` holds (users, rows, sections, cold_users, rule_check, diversity, merchandising,
    quality)."""

    page: pd.DataFrame
    stats: dict[str, Any]


def build_pages(candidate_items: np.ndarray, candidate_scores: np.ndarray, item_embeddings: torch.Tensor,
                user_embeddings: torch.Tensor, interactions: pd.DataFrame, edges: pd.DataFrame,
                user_index: pd.DataFrame, item_index: pd.DataFrame, catalogue_items: pd.DataFrame | None,
                reference_time: pd.Timestamp, settings: HomepageConfig,
                rankings: pd.DataFrame | None = None) -> Homepage:
    """One page per user of ``interactions`` (which needs ``last_ts``), in user id order.

    ``candidate_items``/``candidate_scores`` (U, k): the model's top items per user embedding row (model item
    index), best first; ``user_embeddings`` (U, d) and ``item_embeddings`` (num_items, d) the learned vectors;
    ``user_index``/``item_index`` map ids to those rows; ``catalogue_items`` is the catalogue frame (None
    without one); ``reference_time`` is the newest event of the log; ``rankings`` (user_id, item_id), the plain
    top-K lists, is the baseline of the quality metrics when given."""
    catalogue = build_catalogue(catalogue_items, interactions, item_index, edges, reference_time, settings)
    vectors = inductive_item_vectors(catalogue, item_embeddings)
    signals = collect_signals(catalogue, vectors, interactions, candidate_items, candidate_scores, user_embeddings,
                              item_embeddings, user_index, reference_time, settings)
    merchandising = None
    if settings.merchandising:
        merchandising = load_merchandising(settings.merchandising, catalogue.item_ids, catalogue.category,
                                           [section.kind for section in settings.sections], reference_time)
        log.info("merchandising: %s", merchandising.stats)
    builder = PageBuilder(catalogue, settings, F.normalize(vectors, dim=1).numpy(), merchandising)
    users = np.sort(interactions[schema.USER].unique())
    for user in users.tolist():
        used: set[int] = set()
        bought = signals.purchased.get(user, set())
        for section in settings.sections:
            row = SECTION_KINDS[section.kind].candidates(user, signals)
            if row is not None:
                builder.fill(user, section, section_title(section, row.title_values), row.sources, used, bought)
    page = pd.DataFrame(builder.rows, columns=PAGE_COLUMNS)
    return Homepage(page, _stats(page, users, catalogue, signals, merchandising, edges, rankings, settings))


def _stats(page: pd.DataFrame, users: np.ndarray, catalogue: Catalogue, signals: PageSignals,
           merchandising: Merchandising | None, edges: pd.DataFrame, rankings: pd.DataFrame | None,
           settings: HomepageConfig) -> dict[str, Any]:
    """Counts per section, cold users (no model embedding), the page-rule check, the diversity setting, the
    merchandising rules and slots they touched, and the page-quality metrics."""
    rule_check = check_page_rules(page, pd.Series(catalogue.in_stock, index=catalogue.item_ids),
                                  pd.Series(catalogue.category, index=catalogue.item_ids), signals.purchases, users,
                                  settings)
    if not rule_check["passed"]:
        log.error("homepage: page rules broken: %s", rule_check["violations"])
    merchandising_stats = None
    if merchandising:
        merchandising_stats = {**merchandising.stats,
                               "pinned_slots": int(page["reason"].str.startswith("pin:").sum()),
                               "boosted_slots": int(page["reason"].str.contains(";boost:", regex=False).sum())}
    return {"users": int(page["user_id"].nunique()), "rows": len(page),
            "sections": page.groupby("section").size().to_dict(),
            "cold_users": int(sum(signals.model_row.get(user) is None for user in users.tolist())),
            "rule_check": rule_check,
            "diversity": settings.diversity if settings.diversity == "category_cap"
            else f"mmr(lambda={settings.mmr_lambda})",
            "merchandising": merchandising_stats,
            "quality": page_quality(page, rankings, catalogue.item_ids, catalogue.category, catalogue.popularity,
                                    catalogue.model_index, edges)}
