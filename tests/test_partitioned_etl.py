"""The user-partitioned ETL (homerank.engine.partitioned) against the in-memory reference written with the
pandas steps (aggregate, k-core, encode, temporal split, training weights up to the cutoff): the same edges in the
same order whatever the number of partitions; and the gates decide before anything is published."""

from __future__ import annotations

import json

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homerank.engine import schema
from homerank.engine.config import SplitConfig
from homerank.engine.encode import encode_edges, fit_index
from homerank.engine.interactions import aggregate_edges, sort_edges, weight_events
from homerank.engine.kcore import kcore_filter
from homerank.engine.partitioned import (
    aggregate_by_user,
    encode_and_split,
    events_by_user,
    id_tables,
    interactions_of,
    kcore_by_user,
    write_partitions,
)
from homerank.engine.sorted_events import prefix_totals
from homerank.engine.split import CUTOFF, SPLIT, temporal_split, train_event_filter

WEIGHTS = {"view": 1.0, "click": 2.0, "purchase": 8.0}
TYPES = list(WEIGHTS)


def random_events(seed: int, users: int = 60, items: int = 30, rows: int = 2500) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        schema.USER: rng.integers(0, users, rows) * 7 + 1000,  # ids that are not 0..U-1
        schema.ITEM: rng.integers(0, items, rows) * 3 + 500,
        schema.EVENT: pd.array(rng.choice(TYPES, rows, p=[0.7, 0.2, 0.1]), dtype="string"),
        schema.TS: pd.Timestamp("2026-10-01") + pd.to_timedelta(rng.integers(0, 30 * 86400, rows), unit="s"),
    }).astype({schema.TS: "datetime64[ns]"})


def reference(events: pd.DataFrame, split: SplitConfig, k: int) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    ref_time = events[schema.TS].max()
    weighted = weight_events(events, WEIGHTS, 7.0, ref_time)
    all_edges = sort_edges(aggregate_edges(weighted, TYPES))
    core, rounds = kcore_filter(all_edges, k, k)
    users, items = fit_index(core[schema.USER], schema.USER, schema.USER_INDEX), fit_index(core[schema.ITEM],
                                                                                            schema.ITEM,
                                                                                            schema.ITEM_INDEX)
    split_edges, cutoffs = temporal_split(encode_edges(core, users, items), split)
    keys = split_edges.loc[split_edges[SPLIT] == "train", [schema.USER, schema.ITEM, schema.USER_INDEX]]
    keys = keys.merge(cutoffs, on=schema.USER_INDEX, how="left").drop(columns=[schema.USER_INDEX])
    keys[CUTOFF] = keys[CUTOFF].astype("datetime64[ns]")
    weights = aggregate_edges(train_event_filter(weighted, keys), TYPES)
    values = [schema.WEIGHT, schema.FIRST_TS, schema.LAST_TS, *(schema.count_column(t) for t in TYPES)]
    train = split_edges[split_edges[SPLIT] == "train"].drop(columns=values).merge(weights, on=[schema.USER,
                                                                                               schema.ITEM])
    held = split_edges[split_edges[SPLIT] != "train"]
    edges = pd.concat([train, held[train.columns]]).sort_values([schema.USER_INDEX, schema.ITEM_INDEX])
    return all_edges, edges.reset_index(drop=True), rounds


@pytest.mark.parametrize(("seed", "partitions", "ids"), [(0, 1, "int"), (1, 3, "int"), (2, 7, "int"),
                                                          (3, 16, "int"), (4, 3, "string"), (5, 3, "wide")])
def test_partitioned_etl_equals_the_in_memory_reference(seed, partitions, ids):
    events = random_events(seed)
    if ids == "string":  # text ids sort differently from numbers: "1007" < "999"
        events = events.astype({schema.USER: "string", schema.ITEM: "string"})
    if ids == "wide":  # integer ids whose ranges multiply past 2^62 (negative ones too): the ranked pair key
        events = events.assign(**{schema.USER: events[schema.USER] * 2**40 - 2**62,
                                  schema.ITEM: events[schema.ITEM] * 2**20 - 7})
    split = SplitConfig(test=0.2, valid=1)
    expected_all, expected, expected_rounds = reference(events, split, k=4)
    with dask.config.set(scheduler="sync"):
        frame = dd.from_pandas(events, npartitions=4)
        by_user = events_by_user(frame, len(events), rows_per_partition=-(-len(events) // partitions))
        weighted = weight_events(by_user, WEIGHTS, 7.0, by_user[schema.TS].max().compute())
        all_edges = aggregate_by_user(weighted, TYPES)
        core, rounds, count, item_degree, users = kcore_by_user(all_edges, 4, 4)
        user_index, item_index, per_partition = id_tables(core)
        known_items = id_tables(core, items=item_degree.index)  # the k-core's item degrees: the same tables
        known_both = id_tables(core, items=item_degree.index, users=users)  # and its users: no pass at all
        edges = encode_and_split(core, weighted, item_index, per_partition, split, TYPES).compute()
        got_all = interactions_of(all_edges).compute().reset_index(drop=True)
    assert by_user.npartitions >= min(partitions, 2)
    pd.testing.assert_frame_equal(got_all, expected_all[got_all.columns], check_dtype=False)
    assert rounds == expected_rounds and count == len(edges)
    pd.testing.assert_frame_equal(edges.reset_index(drop=True), expected[edges.columns], check_dtype=False,
                                  check_categorical=False)
    assert user_index[schema.USER_INDEX].tolist() == list(range(len(user_index)))
    # the partitions' distinct users (first rows of their runs): the k-core's users, in index order
    assert user_index[schema.USER].tolist() == expected.drop_duplicates(schema.USER_INDEX)[schema.USER].tolist()
    assert sum(per_partition) == len(user_index)
    pd.testing.assert_frame_equal(known_items[0], user_index)
    pd.testing.assert_frame_equal(known_items[1], item_index)
    assert known_items[2] == per_partition and int(item_degree.sum()) == count
    for got, want in zip(known_both, (user_index, item_index), strict=False):
        pd.testing.assert_frame_equal(got, want)
    assert known_both[2] == per_partition


GATED = """
seed: 3
device: cpu
interactions: {min_user_interactions: 3, min_item_interactions: 3}
gates: {max_edge_change: 0.01}
"""


def test_a_failed_gate_publishes_nothing_and_a_rerun_still_fails(tiny_log, tmp_path):
    from homerank.jobs.cli import main

    config = tmp_path / "gated.yaml"
    config.write_text(GATED)
    run = tmp_path / "run"
    assert main(["etl", "--input", str(tiny_log / "events"), "--out", str(run), "--config", str(config),
                 "--quiet"]) == 0
    accepted = (run / "etl" / "stats.json").read_text()
    edges = pd.read_parquet(run / "etl" / "edges")
    # a smaller drop: half of the files, far more than 1% fewer training edges
    half = tmp_path / "half"
    half.mkdir()
    for part in sorted((tiny_log / "events").glob("*.parquet"))[::2]:
        (half / part.name).write_bytes(part.read_bytes())
    for attempt in range(2):  # the same command again compares with the last accepted ETL, not with itself
        assert main(["etl", "--input", str(half), "--out", str(run), "--config", str(config), "--quiet"]) == 3
        assert (run / "etl" / "stats.json").read_text() == accepted, attempt
        pd.testing.assert_frame_equal(pd.read_parquet(run / "etl" / "edges"), edges)
        gates = json.loads((run / "etl" / "gates.json").read_text())
        assert not gates["accepted"] and any(g["gate"] == "max_edge_change" and not g["passed"]
                                             for g in gates["gates"])
        assert (run / "etl.rejected" / "etl" / "stats.json").exists()
    assert not (run / ".etl.staging").exists()
    # the graph stage keeps reading the accepted ETL
    assert main(["graph", "--out", str(run), "--quiet"]) == 0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 20), st.sampled_from(TYPES), st.floats(0.5, 8.0)), min_size=1,
                         max_size=6), min_size=0, max_size=8),
       st.lists(st.integers(-1, 22), min_size=8, max_size=8), st.integers(0, 3))
def test_prefix_totals_counts_each_runs_events_up_to_its_limit(runs, limits, gap):
    """prefix_totals against a loop over the runs: the rows of each run (sorted by time, ``gap`` unrelated rows
    between runs) at or before the run's limit, their count, weight sum and type counts."""
    rows, starts, ends = [], [], []
    for run in runs:
        rows += [(99, "view", 1.0)] * gap  # rows of no run
        starts.append(len(rows))
        rows += sorted(run)
        ends.append(len(rows) - 1)
    events = pd.DataFrame({schema.TS: pd.to_datetime([r[0] for r in rows], unit="ns"),
                           schema.EVENT: pd.Categorical([r[1] for r in rows], categories=TYPES),
                           schema.WEIGHT: [r[2] for r in rows]})
    limit = np.asarray(limits[:len(runs)], dtype=np.int64)
    count, weight, by_type = prefix_totals(events, np.asarray(starts, dtype=np.int64),
                                           np.asarray(ends, dtype=np.int64), limit, TYPES)
    for g, run in enumerate(runs):
        kept = [r for r in sorted(run) if r[0] <= limit[g]]
        assert count[g] == len(kept)
        assert weight[g] == pytest.approx(sum(r[2] for r in kept))
        assert by_type[g].tolist() == [sum(r[1] == t for r in kept) for t in TYPES]


def test_partitions_are_written_with_byte_stream_split_numbers_and_dictionary_text(tmp_path):
    """Numbers and times (nullable ones too) as BYTE_STREAM_SPLIT, text and categories as dictionaries, booleans
    plain; every column reads back equal, missing values included."""
    import pyarrow.parquet as pq

    frame = pd.DataFrame({
        "user_id": np.array([5, 3, 9], dtype="int64"), "n_view": np.array([1, 0, 2], dtype="int32"),
        "weight": [0.5, -0.0, 1e300], "last_ts": pd.to_datetime(["2024-01-01T00:00:00", "2024-01-02T03:04:05.000000006",
                                                                   "1999-12-31T00:00:00"], format="ISO8601"),
        "maybe": pd.array([1, None, 3], dtype="Int64"), "flag": [True, False, True],
        "split": pd.Categorical(["train", "test", "train"]), "title": pd.array(["a", None, "c"], dtype="string"),
    })
    assert frame["last_ts"].dtype == "datetime64[ns]"
    with dask.config.set({"dataframe.convert-string": False}):
        write_partitions(dd.from_pandas(frame, npartitions=1), tmp_path / "out")
    part = tmp_path / "out" / "part-00000.parquet"
    columns = pq.ParquetFile(part).metadata.row_group(0)
    encodings = {columns.column(i).path_in_schema: columns.column(i).encodings for i in range(columns.num_columns)}
    for name in ("user_id", "n_view", "weight", "last_ts", "maybe"):
        assert "BYTE_STREAM_SPLIT" in encodings[name], name
    for name in ("split", "title"):
        assert "RLE_DICTIONARY" in encodings[name], name
    assert "BYTE_STREAM_SPLIT" not in encodings["flag"]
    back = pd.read_parquet(part)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False, check_categorical=False)
    assert str(back["maybe"].dtype) == "Int64" and np.signbit(back["weight"][1])
