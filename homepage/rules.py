"""Checks the page rules over every user's homepage after it is built, so each run (the demo included) proves
them on its whole output, not on one example. Each rule counts the slots (or rows, or users) that break it:

    once_per_page      an item appears more than once on a user's page
    out_of_stock       an out-of-stock item is shown
    purchased          an item the user bought is shown in a row that may not show purchases (all but
                       ``buy_again``; see ``SECTION_KINDS``)
    category_cap       more than ``max_per_category`` items of one category in a row (category_cap diversity;
                       the kinds the registry exempts from the cap -- trending and buy_again rows, one category
                       or the user's own history by design -- and pinned slots, the merchandiser's decision,
                       are not counted)
    slots              a row's slots are not 1..n, or n exceeds the section's configured slots
    empty_reason       a slot without a reason
    empty_explanation  a slot without an explanation (counted when the page has the ``explanation`` column)
    empty_page         a user with history but no page
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from homerank.homepage.config import HomepageConfig
from homerank.homepage.sections import PURCHASE_KINDS, UNCAPPED_KINDS


def check_page_rules(page: pd.DataFrame, in_stock: pd.Series, category: pd.Series, purchases: pd.DataFrame,
                     users: np.ndarray, settings: HomepageConfig) -> dict[str, Any]:
    """Violations per rule (all zero on a correct page). ``in_stock``/``category`` are indexed by item id;
    ``purchases`` has (user_id, item_id) pairs; ``users`` are all users that should have a page."""
    violations: dict[str, int] = {}
    violations["once_per_page"] = int(page.duplicated(["user_id", "item_id"]).sum())
    violations["out_of_stock"] = int((~page["item_id"].map(in_stock).fillna(False).astype(bool)).sum())
    clash = page.merge(purchases[["user_id", "item_id"]].drop_duplicates(), on=["user_id", "item_id"])
    violations["purchased"] = int((~clash["section"].isin(PURCHASE_KINDS)).sum())
    if settings.diversity == "category_cap":
        capped = page[~page["section"].isin(UNCAPPED_KINDS) & ~page["reason"].str.startswith("pin:")]
        per_category = capped.assign(category=capped["item_id"].map(category)).groupby(
            ["user_id", "section", "category"]).size()
        violations["category_cap"] = int((per_category > settings.max_per_category).sum())
    limits = {section.kind: section.slots for section in settings.sections}
    rows = page.groupby(["user_id", "section"])["slot"].agg(["min", "max", "count", "nunique"]).reset_index()
    bad = (rows["min"] != 1) | (rows["max"] != rows["count"]) | (rows["nunique"] != rows["count"])
    bad |= rows["count"] > rows["section"].map(limits).fillna(0)
    violations["slots"] = int(bad.sum())
    violations["empty_reason"] = int((page["reason"].fillna("").str.len() == 0).sum())
    if "explanation" in page:
        violations["empty_explanation"] = int((page["explanation"].fillna("").str.len() == 0).sum())
    violations["empty_page"] = int(len(np.setdiff1d(users, page["user_id"].unique())))
    return {"users_checked": int(len(users)), "slots_checked": int(len(page)), "violations": violations,
            "passed": not any(violations.values())}
