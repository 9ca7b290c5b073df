import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from homerank.engine import schema
from homerank.engine.config import SplitConfig
from homerank.engine.interactions import aggregate_edges, weight_events
from homerank.engine.split import CUTOFF, SPLIT, temporal_split, train_event_filter
from tests.conftest import make_events


def encoded(rows):
    """rows of (user_index, item_index, first_ts day)."""
    frame = pd.DataFrame(rows, columns=[schema.USER_INDEX, schema.ITEM_INDEX, "day"])
    frame[schema.FIRST_TS] = pd.Timestamp("2026-01-01") + pd.to_timedelta(frame.pop("day"), unit="D")
    frame[schema.USER] = frame[schema.USER_INDEX]
    frame[schema.ITEM] = frame[schema.ITEM_INDEX]
    return frame


def test_last_items_by_first_interaction_go_to_test_then_valid():
    # user 0 met items in the order 5 (day 1), 3 (day 2), 9 (day 3), 1 (day 4), 7 (day 5)
    edges = encoded([(0, 9, 3), (0, 5, 1), (0, 7, 5), (0, 3, 2), (0, 1, 4)])
    out, cutoffs = temporal_split(edges, SplitConfig(test=1, valid=1))
    split = dict(zip(out[schema.ITEM_INDEX], out[SPLIT], strict=True))
    assert split == {5: "train", 3: "train", 9: "train", 1: "valid", 7: "test"}
    assert cutoffs.set_index(schema.USER_INDEX)[CUTOFF][0] == pd.Timestamp("2026-01-05")  # first held-out time


def test_fraction_rounds_and_keeps_min_train():
    edges = encoded([(0, i, i) for i in range(10)] + [(1, 0, 0), (1, 1, 1)] + [(2, 0, 0)])
    out, _ = temporal_split(edges, SplitConfig(test=0.2, valid=0.1, min_train=1))
    counts = out.groupby([schema.USER_INDEX, SPLIT], observed=False).size().unstack(fill_value=0)
    assert counts.loc[0].to_dict() == {"train": 7, "valid": 1, "test": 2}
    assert counts.loc[1].to_dict() == {"train": 1, "valid": 0, "test": 1}  # room for one held-out item only
    assert counts.loc[2].to_dict() == {"train": 1, "valid": 0, "test": 0}  # a single item stays in train


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30), st.integers(0, 50)), min_size=1, max_size=80),
       st.sampled_from([1, 2, 0.2, 0.5]), st.sampled_from([0, 1, 0.1]))
def test_split_properties(rows, test, valid):
    edges = encoded(rows).drop_duplicates([schema.USER_INDEX, schema.ITEM_INDEX])
    config = SplitConfig(test=test, valid=valid, min_train=1)
    out, _ = temporal_split(edges, config)
    assert len(out) == len(edges)
    for _, group in out.groupby(schema.USER_INDEX):
        assert (group[SPLIT] == "train").sum() >= 1
        train_latest = group.loc[group[SPLIT] == "train", schema.FIRST_TS].max()
        held = group.loc[group[SPLIT] != "train", schema.FIRST_TS]
        assert held.empty or held.min() >= train_latest  # nothing held out is older than training
        valid_latest = group.loc[group[SPLIT] == "valid", schema.FIRST_TS].max()
        test_times = group.loc[group[SPLIT] == "test", schema.FIRST_TS]
        assert test_times.empty or pd.isna(valid_latest) or test_times.min() >= valid_latest


def test_training_weights_stop_at_the_cutoff():
    # user a: item x viewed day 1 and bought again on day 10; item y first seen on day 5 -> test.
    # The day-10 purchase of x is after the cutoff (day 5) and must not reach the training weight.
    events = make_events([
        ("a", "x", "view", "2026-01-01 00:00"),
        ("a", "y", "view", "2026-01-05 00:00"),
        ("a", "x", "purchase", "2026-01-10 00:00"),
    ])
    weighted = weight_events(events, {"view": 1.0, "purchase": 8.0}, None, events[schema.TS].max())
    keys = pd.DataFrame({schema.USER: ["a"], schema.ITEM: ["x"], CUTOFF: [pd.Timestamp("2026-01-05")]})
    train = aggregate_edges(train_event_filter(weighted, keys), ["view", "purchase"])
    assert train[schema.WEIGHT].tolist() == [1.0]
    assert train["n_purchase"].tolist() == [0]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(-3, 3)), min_size=1, max_size=60,
                unique_by=lambda row: row[:2]),
       st.sampled_from([1, 7, 10**9, 86_400 * 10**9]), st.sampled_from([0, -(2**62), 2**62]))
def testorder_by_user_then_time_is_the_three_key_sort(rows, step, origin):
    """Edges in (user, item) order: the order by (user, first time, item) equals np.lexsort's, whatever the times'
    common step (ns, seconds, days) and origin (before 1970, near the int64 ends)."""
    import numpy as np

    from homerank.engine.split import order_by_user_then_time

    rows = sorted(rows)
    users = np.asarray([r[0] for r in rows], dtype=np.int64)
    items = np.asarray([r[1] for r in rows], dtype=np.int64)
    times = origin + step * np.asarray([r[2] for r in rows], dtype=np.int64)
    expected = np.lexsort(np.stack([items, times, users]))
    assert order_by_user_then_time(users, items, times).tolist() == expected.tolist()
    # int32 codes (the homepage's explainer) combine without wrapping
    assert order_by_user_then_time(users.astype(np.int32), items.astype(np.int32), times).tolist() == \
        expected.tolist()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(-3, 3)), min_size=1, max_size=80),
       st.sampled_from([1, 7, 10**9, 86_400 * 10**9]), st.sampled_from([0, -(2**62), 2**62]),
       st.sampled_from([1, 2**40, 2**57]))
def test_pair_time_order_is_the_stable_two_key_sort(rows, step, origin, pair_scale):
    """The events' order by (pair key, time), ties in row order, equals np.lexsort's whether the one-key path
    applies (small pair keys times the number of time steps) or not (pair keys near 2^63 / R), for times in ns,
    seconds or days, before 1970 and near the int64 ends."""
    import numpy as np

    from homerank.engine.sorted_events import pair_time_order

    pairs = pair_scale * np.asarray([r[0] for r in rows], dtype=np.int64)
    times = origin + step * np.asarray([r[1] for r in rows], dtype=np.int64)
    expected = np.lexsort(np.stack([times, pairs]))
    assert pair_time_order(pairs, times).tolist() == expected.tolist()
