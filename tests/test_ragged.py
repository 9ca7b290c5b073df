"""`Ragged`: per-user lists as one CSR table, read a block at a time, equal to the dict of lists it replaces."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from homerank.homepage.ragged import Ragged


def test_lists_keep_the_row_order_of_each_user_and_read_like_a_dict():
    lists = Ragged.by_owner(np.array(["b", "a", "b", "c", "b"]), np.array([5, 1, 3, 9, 4]))
    assert list(lists.users) == ["a", "b", "c"]
    assert lists.get("b").tolist() == [5, 3, 4]
    assert lists.get("zz") is None and lists.get("a") is not None and len(lists.users) == 3
    rows = lists.rows(np.array(["c", "zz", "b"], dtype=object))
    line, values = lists.flat(rows)
    assert line.tolist() == [0, 2, 2, 2] and values.tolist() == [9, 5, 3, 4]
    assert lists.padded(rows[rows >= 0]).tolist() == [[9, -1, -1], [5, 3, 4]]


def test_empty_tables_and_blocks():
    empty = Ragged.by_owner(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert len(empty.users) == 0 and empty.get(1) is None
    rows = empty.rows(np.array([1, 2]))
    assert rows.tolist() == [-1, -1]
    line, values = empty.flat(rows)
    assert line.size == 0 and values.size == 0
    assert empty.padded(rows[rows >= 0]).shape == (0, 1)
    assert Ragged.from_mapping({}).flat(np.zeros(0, dtype=np.int64))[0].size == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 50)), max_size=40),
       st.lists(st.integers(0, 8), max_size=12))
def test_a_block_reads_what_a_dict_of_lists_holds(pairs, block):
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    values = np.array([v for _, v in pairs], dtype=np.int64)
    lists = Ragged.by_owner(users, values)
    expected = {}
    for user, value in pairs:
        expected.setdefault(user, []).append(value)
    assert {user: lists.get(user).tolist() for user in lists.users} == expected
    again = Ragged.from_mapping(expected)
    assert {u: again.get(u).tolist() for u in again.users} == expected
    block = np.array(block, dtype=np.int64)
    rows = lists.rows(block)
    line, flat = lists.flat(rows)
    assert [(r, v) for r, v in zip(line.tolist(), flat.tolist(), strict=True)] == [
        (b, v) for b, user in enumerate(block.tolist()) for v in expected.get(user, [])]
    padded = lists.padded(rows[rows >= 0])
    for values_of, user in zip(padded.tolist(), block[rows >= 0].tolist(), strict=True):
        assert [p for p in values_of if p >= 0] == expected[user]
    assert (rows >= 0).tolist() == [user in expected for user in block.tolist()]
    assert pd.Index(lists.users).is_monotonic_increasing
