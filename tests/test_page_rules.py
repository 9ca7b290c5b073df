"""The page-rule checker on a hand-made page where every rule is broken once."""

import numpy as np
import pandas as pd

from homerank.homepage.config import HomepageConfig, SectionConfig
from homerank.homepage.rules import check_page_rules

SETTINGS = HomepageConfig(sections=[SectionConfig(kind="for_you", title="For you", slots=3),
                                    SectionConfig(kind="buy_again", title="Buy again", slots=2)],
                          max_per_category=2)
IN_STOCK = pd.Series({1: True, 2: True, 3: True, 4: False, 5: True})
CATEGORY = pd.Series({1: "A", 2: "A", 3: "A", 4: "B", 5: "B"})
PURCHASES = pd.DataFrame({"user_id": ["u", "v"], "item_id": [5, 1]})


def _page(rows):
    return pd.DataFrame(rows, columns=["user_id", "section", "slot", "item_id", "reason"])


def test_a_correct_page_passes():
    page = _page([("u", "for_you", 1, 1, "r"), ("u", "for_you", 2, 2, "r"), ("u", "buy_again", 1, 5, "r"),
                  ("v", "for_you", 1, 2, "r"), ("v", "buy_again", 1, 1, "r")])
    check = check_page_rules(page, IN_STOCK, CATEGORY, PURCHASES, np.array(["u", "v"]), SETTINGS)
    assert check["passed"] and check["users_checked"] == 2 and check["slots_checked"] == 5


def test_each_broken_rule_is_counted():
    page = _page([
        ("u", "for_you", 1, 1, "r"), ("u", "for_you", 2, 2, "r"), ("u", "for_you", 3, 3, "r"),  # 3 of A: cap
        ("u", "buy_again", 1, 1, "r"),   # item 1 twice on u's page
        ("u", "buy_again", 3, 4, ""),    # out of stock, no reason, slots 1, 3 (a gap)
        ("v", "for_you", 1, 1, "r"),     # v bought item 1: only buy_again may show it
    ])
    check = check_page_rules(page, IN_STOCK, CATEGORY, PURCHASES, np.array(["u", "v", "w"]), SETTINGS)
    assert not check["passed"]
    assert check["violations"] == {"once_per_page": 1, "out_of_stock": 1, "purchased": 1, "category_cap": 1,
                                   "slots": 1, "empty_reason": 1, "empty_page": 1}
