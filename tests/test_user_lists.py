"""`UserLists`: per-user lists as one CSR table, read a block at a time, equal to the dict of lists it replaces."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from homerank.homepage.user_lists import UserLists


def test_lists_keep_the_row_order_of_each_user_and_read_as_a_mapping():
    lists = UserLists.of(np.array(["b", "a", "b", "c", "b"]), np.array([5, 1, 3, 9, 4]))
    assert list(lists) == ["a", "b", "c"]
    assert lists["b"].tolist() == [5, 3, 4]
    assert lists.get("zz") is None and "a" in lists and "zz" not in lists and len(lists) == 3
    rows, values = lists.flat(np.array(["c", "zz", "b"], dtype=object))
    assert rows.tolist() == [0, 2, 2, 2] and values.tolist() == [9, 5, 3, 4]
    padded, group = lists.padded(np.array(["c", "zz", "b"], dtype=object))
    assert group.tolist() == [0, -1, 1]
    assert padded.tolist() == [[9, -1, -1], [5, 3, 4]]


def test_empty_tables_and_blocks():
    empty = UserLists.empty()
    assert len(empty) == 0 and empty.get(1) is None
    rows, values = empty.flat(np.array([1, 2]))
    assert rows.size == 0 and values.size == 0
    padded, group = empty.padded(np.array([1, 2]))
    assert padded.shape == (0, 1) and group.tolist() == [-1, -1]
    assert UserLists.from_mapping({}).flat(np.zeros(0, dtype=np.int64))[0].size == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 50)), max_size=40),
       st.lists(st.integers(0, 8), max_size=12))
def test_a_block_reads_what_a_dict_of_lists_holds(pairs, block):
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    values = np.array([v for _, v in pairs], dtype=np.int64)
    lists = UserLists.of(users, values)
    expected = {}
    for user, value in pairs:
        expected.setdefault(user, []).append(value)
    assert {user: lists[user].tolist() for user in lists} == expected
    assert {u: v.tolist() for u, v in UserLists.from_mapping(expected).items()} == expected
    block = np.array(block, dtype=np.int64)
    rows, flat = lists.flat(block)
    assert [(r, v) for r, v in zip(rows.tolist(), flat.tolist(), strict=True)] == [
        (line, v) for line, user in enumerate(block.tolist()) for v in expected.get(user, [])]
    padded, group = lists.padded(block)
    for line, user in enumerate(block.tolist()):
        if user in expected:
            assert [p for p in padded[group[line]].tolist() if p >= 0] == expected[user]
        else:
            assert group[line] == -1
    assert pd.Index(lists.users).is_monotonic_increasing
