import math

import pandas as pd

from homerank.engine import schema
from homerank.engine.interactions import aggregate_edges, weight_events
from tests.conftest import make_events

WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0}
TYPES = list(WEIGHTS)


def test_weights_without_decay_sum_per_edge():
    events = make_events([
        ("a", "x", "view", "2026-01-01 10:00"),
        ("a", "x", "click", "2026-01-01 10:01"),
        ("a", "x", "purchase", "2026-01-02 10:00"),
        ("a", "y", "view", "2026-01-03 10:00"),
        ("b", "x", "cart", "2026-01-04 10:00"),
    ])
    weighted = weight_events(events, WEIGHTS, None, events[schema.TS].max())
    edges = aggregate_edges(weighted, TYPES).set_index([schema.USER, schema.ITEM]).sort_index()
    assert edges.loc[("a", "x"), schema.WEIGHT] == 1 + 2 + 8
    assert edges.loc[("a", "y"), schema.WEIGHT] == 1
    assert edges.loc[("b", "x"), schema.WEIGHT] == 4
    assert edges.loc[("a", "x"), "n_purchase"] == 1 and edges.loc[("a", "x"), "n_view"] == 1
    assert edges.loc[("a", "x"), schema.FIRST_TS] == pd.Timestamp("2026-01-01 10:00")
    assert edges.loc[("a", "x"), schema.LAST_TS] == pd.Timestamp("2026-01-02 10:00")


def test_half_life_decay_by_hand():
    # reference time = newest event; a purchase 14 days older with half-life 7 keeps 8 * 0.25 = 2
    events = make_events([
        ("a", "x", "purchase", "2026-01-01 00:00"),
        ("a", "y", "view", "2026-01-15 00:00"),
        ("a", "z", "click", "2026-01-08 00:00"),
    ])
    weighted = weight_events(events, WEIGHTS, 7.0, events[schema.TS].max())
    by_item = dict(zip(weighted[schema.ITEM], weighted[schema.WEIGHT], strict=True))
    assert math.isclose(by_item["x"], 2.0)
    assert math.isclose(by_item["y"], 1.0)
    assert math.isclose(by_item["z"], 1.0)  # 2 * 0.5
