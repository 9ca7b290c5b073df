"""The homepage's stats, summed block by block so no step holds every user's page rows: counts per section, the
page-rule check (violation counts add up over blocks of disjoint users), merchandising slots, and the page-quality
metrics from sums (`homepage.quality.exposure_metrics`) plus one (hits, dcg, |T_u|) line per user for the for_you
row's accuracy (its length, the largest for_you slot, is known only after the last block)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.split import SPLIT
from homerank.homepage.catalogue import Catalogue
from homerank.homepage.config import HomepageConfig
from homerank.homepage.merchandising import Merchandising
from homerank.homepage.quality import (
    diversity_per_user,
    exposure_metrics,
    for_you_hits,
    for_you_summary,
    list_metrics,
)
from homerank.homepage.rules import check_page_rules
from homerank.homepage.signals import PageSignals


class PageTally:
    """Add each block's page rows with `add`; `stats` returns what ``homepage_stats.json`` holds."""

    def __init__(self, catalogue: Catalogue, signals: PageSignals, users: np.ndarray, edges: pd.DataFrame,
                 merchandising: Merchandising | None, settings: HomepageConfig) -> None:
        self.catalogue, self.signals, self.users, self.settings = catalogue, signals, users, settings
        self.merchandising = merchandising
        self.in_stock = pd.Series(catalogue.in_stock, index=catalogue.item_ids)
        self.category = pd.Series(catalogue.category, index=catalogue.item_ids)
        self.item_index = pd.Index(catalogue.item_ids)
        self.test = edges.loc[edges[SPLIT] == "test", [schema.USER, schema.ITEM, SPLIT]]
        self.exposure = np.zeros(len(catalogue.item_ids), dtype=np.int64)
        self.violations: Counter[str] = Counter()
        self.sections: Counter[str] = Counter()
        self.counts = {"users": 0, "rows": 0, "users_checked": 0, "pinned": 0, "boosted": 0, "diversity_pages": 0}
        self.diversity_sum = 0.0
        self.hits: list[pd.DataFrame] = []
        self.for_you_length = 0
        self.evidence: Counter[str] = Counter()
        self.segment_users = 0

    def add(self, page: pd.DataFrame, users: np.ndarray, evidence: np.ndarray | None = None) -> None:
        """One block's rows ``page`` (``OUTPUT_COLUMNS``) for the block's ``users`` (all of them should have a page);
        ``evidence`` (n,) the kind of each slot's explanation (`homerank.homepage.explain`)."""
        if evidence is not None and len(evidence):
            kinds, counts = np.unique(evidence.astype(str), return_counts=True)
            self.evidence.update(dict(zip(kinds.tolist(), counts.tolist(), strict=True)))
            self.segment_users += int(pd.unique(page["user_id"].to_numpy()[evidence == "segment"]).size)
        purchases = self.signals.purchases
        purchases = purchases[purchases[schema.USER].isin(users)]
        check = check_page_rules(page, self.in_stock, self.category, purchases, users, self.settings)
        self.violations.update(check["violations"])
        self.counts["users_checked"] += check["users_checked"]
        self.counts["users"] += int(page["user_id"].nunique())
        self.counts["rows"] += len(page)
        self.sections.update(page.groupby("section").size().to_dict())
        if self.merchandising:
            self.counts["pinned"] += int(page["reason"].str.startswith("pin:").sum())
            self.counts["boosted"] += int(page["reason"].str.contains(";boost:", regex=False).sum())
        positions = self.item_index.get_indexer(page["item_id"])
        self.exposure += np.bincount(positions[positions >= 0], minlength=self.exposure.size)
        per_user = diversity_per_user(page, self.category)
        self.diversity_sum += float(per_user.sum())
        self.counts["diversity_pages"] += len(per_user)
        for_you = page.loc[page["section"] == "for_you", "slot"]
        self.for_you_length = max(self.for_you_length, int(for_you.max()) if len(for_you) else 0)
        if len(for_you) and len(self.test):
            self.hits.append(for_you_hits(page, self.test[self.test[schema.USER].isin(users)]))

    def stats(self, rankings: pd.DataFrame | None) -> dict[str, Any]:
        """Counts per section, cold users (no model embedding), the page-rule check, the diversity setting, the
        merchandising rules and slots they touched, and the page-quality metrics (``rankings``, the plain top-K
        lists, as the baseline when given)."""
        settings, catalogue = self.settings, self.catalogue
        violations = dict(self.violations)
        rule_check = {"users_checked": self.counts["users_checked"], "slots_checked": self.counts["rows"],
                      "violations": violations, "passed": not any(violations.values())}
        merchandising_stats = None
        if self.merchandising:
            merchandising_stats = {**self.merchandising.stats, "pinned_slots": self.counts["pinned"],
                                   "boosted_slots": self.counts["boosted"]}
        num_users = self.counts["users"]
        quality: dict[str, Any] = {"homepage": exposure_metrics(
            self.exposure, self.diversity_sum, self.counts["diversity_pages"], catalogue.popularity,
            catalogue.model_index, num_users)}
        if rankings is not None:
            quality["top_k_baseline"] = list_metrics(rankings, catalogue.item_ids, catalogue.category,
                                                     catalogue.popularity, catalogue.model_index, num_users)
        quality["for_you_accuracy"] = (for_you_summary(pd.concat(self.hits), self.for_you_length)
                                       if self.hits else {})
        model_row = self.signals.model_row
        return {"users": num_users, "rows": self.counts["rows"],
                "sections": {kind: int(n) for kind, n in sorted(self.sections.items())},
                "cold_users": int(sum(model_row.get(user) is None for user in self.users.tolist())),
                "segment_fallback_users": self.segment_users,
                "explanations": {kind: int(n) for kind, n in sorted(self.evidence.items())},
                "rule_check": rule_check,
                "diversity": settings.diversity if settings.diversity == "category_cap"
                else f"mmr(lambda={settings.mmr_lambda})",
                "merchandising": merchandising_stats,
                "quality": quality}
