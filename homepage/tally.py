"""The homepage's stats, summed block by block so no step holds every user's page rows: counts per section, the
page-rule check (violation counts add up over blocks of disjoint users), merchandising slots, and the page-quality
metrics from sums (`homepage.quality.exposure_metrics`) plus one (hits, dcg, |T_u|) line per user for the for_you
row's accuracy (its length, the largest for_you slot, is known only after the last block)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.split import SPLIT
from homerank.homepage.catalogue import Catalogue
from homerank.homepage.config import HomepageConfig
from homerank.homepage.merchandising import Merchandising
from homerank.homepage.quality import (
    exposure_metrics,
    for_you_hits,
    for_you_summary,
    list_metrics,
    page_diversity,
)
from homerank.homepage.rules import check_page_rules
from homerank.homepage.signals import PageSignals

COUNT_KEYS = ("users", "rows", "users_checked", "pinned", "boosted", "diversity_pages", "segment_users")


@dataclass
class BlockSums:
    """The additive part of the stats for some blocks of disjoint users: counts, the violations found, slots per
    section and per explanation kind, the exposure of each catalogue item (C,), the summed page diversity, the
    for_you hit lines and the longest for_you row. `merge` adds another's."""

    exposure: np.ndarray
    violations: Counter[str] = field(default_factory=Counter)
    sections: Counter[str] = field(default_factory=Counter)
    evidence: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)  # users, rows, users_checked, pinned, boosted, ...
    diversity_sum: float = 0.0
    hits: list[pd.DataFrame] = field(default_factory=list)
    for_you_length: int = 0

    def merge(self, other: BlockSums) -> BlockSums:
        self.exposure += other.exposure
        for mine, theirs in ((self.violations, other.violations), (self.sections, other.sections),
                             (self.evidence, other.evidence), (self.counts, other.counts)):
            mine.update(theirs)  # adds, and keeps zero counts (a rule with no violation stays listed)
        self.diversity_sum += other.diversity_sum
        self.hits.extend(other.hits)
        self.for_you_length = max(self.for_you_length, other.for_you_length)
        return self


class PageTally:
    """Compute each block's `sums` (in whichever process built the block) and `merge` them here; `stats` returns
    what ``homepage_stats.json`` holds."""

    def __init__(self, catalogue: Catalogue, signals: PageSignals, users: np.ndarray, edges: pd.DataFrame,
                 merchandising: Merchandising | None, settings: HomepageConfig) -> None:
        self.catalogue, self.signals, self.users, self.settings = catalogue, signals, users, settings
        self.merchandising = merchandising
        self.in_stock = pd.Series(catalogue.in_stock, index=catalogue.item_ids)
        self.category = pd.Series(catalogue.category, index=catalogue.item_ids)
        self.category_codes = pd.factorize(np.asarray(catalogue.category), use_na_sentinel=True)[0]  # by position
        self.item_index = pd.Index(catalogue.item_ids)
        self.test = edges.loc[edges[SPLIT] == "test", [schema.USER, schema.ITEM, SPLIT]]
        self.totals = self.empty()

    def empty(self) -> BlockSums:
        return BlockSums(np.zeros(len(self.catalogue.item_ids), dtype=np.int64),
                         counts=Counter(dict.fromkeys(COUNT_KEYS, 0)))

    def merge(self, sums: BlockSums) -> None:
        self.totals.merge(sums)

    def sums(self, page: pd.DataFrame, users: np.ndarray, evidence: np.ndarray | None = None) -> BlockSums:
        """The sums of one block's rows ``page`` (``OUTPUT_COLUMNS``) for the block's ``users`` (all of them should
        have a page); ``evidence`` (n,) the kind of each slot's explanation (`homerank.homepage.explain`)."""
        out = self.empty()
        counts = out.counts
        if evidence is not None and len(evidence):
            kinds, found = np.unique(evidence.astype(str), return_counts=True)
            out.evidence.update(dict(zip(kinds.tolist(), found.tolist(), strict=True)))
            counts["segment_users"] += int(pd.unique(page["user_id"].to_numpy()[evidence == "segment"]).size)
        purchases = self.signals.purchases
        purchases = purchases[purchases[schema.USER].isin(users)]
        check = check_page_rules(page, self.in_stock, self.category, purchases, users, self.settings)
        out.violations.update(check["violations"])
        counts["users_checked"] += check["users_checked"]
        counts["users"] += int(page["user_id"].nunique())
        counts["rows"] += len(page)
        out.sections.update(page.groupby("section").size().to_dict())
        if self.merchandising:
            counts["pinned"] += int(page["reason"].str.startswith("pin:").sum())
            counts["boosted"] += int(page["reason"].str.contains(";boost:", regex=False).sum())
        positions = self.item_index.get_indexer(page["item_id"])
        out.exposure += np.bincount(positions[positions >= 0], minlength=out.exposure.size)
        per_user = page_diversity(page["user_id"].to_numpy(),
                                  np.where(positions >= 0, self.category_codes[np.maximum(positions, 0)], -1))
        out.diversity_sum += float(per_user.sum())
        counts["diversity_pages"] += len(per_user)
        for_you = page.loc[page["section"] == "for_you", "slot"]
        out.for_you_length = int(for_you.max()) if len(for_you) else 0
        if len(for_you) and len(self.test):
            out.hits.append(for_you_hits(page, self.test[self.test[schema.USER].isin(users)]))
        return out

    def stats(self, rankings: pd.DataFrame | Iterable[pd.DataFrame] | None) -> dict[str, Any]:
        """Counts per section, cold users (no model embedding), the page-rule check, the diversity setting, the
        merchandising rules and slots they touched, and the page-quality metrics (``rankings``, the plain top-K
        lists, as the baseline when given)."""
        settings, catalogue = self.settings, self.catalogue
        totals = self.totals
        counts = totals.counts
        violations = dict(totals.violations)
        rule_check = {"users_checked": counts["users_checked"], "slots_checked": counts["rows"],
                      "violations": violations, "passed": not any(violations.values())}
        merchandising_stats = None
        if self.merchandising:
            merchandising_stats = {**self.merchandising.stats, "pinned_slots": counts["pinned"],
                                   "boosted_slots": counts["boosted"]}
        num_users = counts["users"]
        quality: dict[str, Any] = {"homepage": exposure_metrics(
            totals.exposure, totals.diversity_sum, counts["diversity_pages"], catalogue.popularity,
            catalogue.model_index, num_users)}
        if rankings is not None:
            quality["top_k_baseline"] = list_metrics(rankings, catalogue.item_ids, catalogue.category,
                                                     catalogue.popularity, catalogue.model_index, num_users)
        quality["for_you_accuracy"] = (for_you_summary(pd.concat(totals.hits), totals.for_you_length)
                                       if totals.hits else {})
        model_row = self.signals.model_row
        return {"users": num_users, "rows": counts["rows"],
                "sections": {kind: int(n) for kind, n in sorted(totals.sections.items())},
                "cold_users": int((~pd.Index(self.users).isin(model_row.index)).sum()),
                "segment_fallback_users": counts["segment_users"],
                "explanations": {kind: int(n) for kind, n in sorted(totals.evidence.items())},
                "rule_check": rule_check,
                "diversity": settings.diversity if settings.diversity == "category_cap"
                else f"mmr(lambda={settings.mmr_lambda})",
                "merchandising": merchandising_stats,
                "quality": quality}
