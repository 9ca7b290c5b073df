"""Issue 16 items 3, 4, 5 and 9: one canonical id form across files and formats, accepted column types checked
from the Parquet schema before reading, events from the future quarantined, and the catalogue and merchandising
ids converted to the run's id form."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homerank.engine import schema
from homerank.engine.backend import CPU
from homerank.engine.config import IngestConfig
from homerank.engine.errors import HomerankError
from homerank.engine.ingest import canonical_ids, ingest_events, read_catalogue, validate_events
from homerank.homepage.merchandising import load_merchandising

DAY = pd.Timestamp("2026-10-01")


def events(users: list[int], items: list[int]) -> pd.DataFrame:
    """One view per (user, item) pair, a minute apart, with integer ids."""
    return pd.DataFrame({"user_id": users, "item_id": items, "event_type": "view",
                         "timestamp": DAY + pd.to_timedelta(np.arange(len(users)), unit="min")})


def ingest(path: Path, **config) -> object:
    return ingest_events(str(path), IngestConfig(**config), CPU, quarantine_dir=path.parent / f"q-{path.name}")


def id_sets(result) -> tuple[set[str], set[str]]:
    frame = result.events.compute()
    return {str(u) for u in frame[schema.USER]}, {str(i) for i in frame[schema.ITEM]}


# item 3: the same user is one user, whatever file or format it comes from

def test_float_parquet_ids_and_csv_ids_are_the_same_users(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    frame = events([1000398, 1000399, 1000400], [500001, 500002, 500003])
    frame.astype({"user_id": "float64", "item_id": "float64"}).to_parquet(folder / "a.parquet")
    frame.assign(timestamp=frame["timestamp"] + pd.Timedelta(hours=1)).to_csv(folder / "b.csv", index=False)
    result = ingest(folder)
    users, items = id_sets(result)
    assert users == {"1000398", "1000399", "1000400"} and items == {"500001", "500002", "500003"}
    assert result.id_dtype == "string" and result.rows["kept"] == 6


def test_parquet_float_ids_are_integers_and_a_fraction_is_a_bad_id(tmp_path):
    frame = events([1, 2, 3], [7, 8, 9]).astype({"user_id": "float64"})
    frame.loc[2, "user_id"] = 1.5
    path = tmp_path / "float.parquet"
    frame.to_parquet(path)
    result = ingest(path)
    assert result.id_dtype == "int64"
    assert sorted(result.events.compute()[schema.USER].tolist()) == [1, 2]
    assert result.reasons == {"null_or_bad_user_id": 1}
    as_text = ingest(path, id_dtype="string")
    assert sorted(as_text.events.compute()[schema.USER].tolist()) == ["1", "2"]  # never "1.0"


def test_canonical_ids_by_hand():
    text, bad = canonical_ids(pd.Series([" 42 ", "42.0", "007", "", None, "a.0"], dtype=object), "string")
    assert text[~bad].tolist() == ["42", "42", "007", "a.0"] and bad.tolist() == [False, False, False, True, True,
                                                                                  False]
    ints, bad = canonical_ids(pd.Series(["42", "+42", "42.00", "1e3", "9223372036854775808", "x"]), "int64")
    assert ints[~bad].tolist() == [42, 42, 42] and bad.tolist() == [False, False, False, True, True, True]
    ints, bad = canonical_ids(pd.Series([2**64 - 1, 5], dtype="uint64"), "int64")
    assert bad.tolist() == [True, False] and ints[~bad].tolist() == [5]
    floats, bad = canonical_ids(pd.Series([3.0, np.inf, np.nan, 2.0**63]), "string")
    assert floats[~bad].tolist() == ["3"] and bad.tolist() == [False, True, True, True]


id_lists = st.lists(st.tuples(st.integers(0, 2**53), st.integers(-(2**40), 2**40)), min_size=1, max_size=12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(id_lists)
def test_int_float_and_csv_ids_give_the_same_users_and_items(tmp_path, pairs):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    frame = events([u for u, _ in pairs], [i for _, i in pairs])
    expected = ({str(u) for u, _ in pairs}, {str(i) for _, i in pairs})
    (folder / "int").mkdir()
    (folder / "float").mkdir()
    (folder / "csv").mkdir()
    frame.to_parquet(folder / "int" / "a.parquet")
    frame.astype({"user_id": "float64", "item_id": "float64"}).to_parquet(folder / "float" / "a.parquet")
    frame.to_csv(folder / "csv" / "a.csv", index=False)
    for kind in ("int", "float", "csv"):
        assert id_sets(ingest(folder / kind)) == expected, kind
    mixed = folder / "mixed"
    mixed.mkdir()
    for kind, name in (("int", "a.parquet"), ("float", "b.parquet"), ("csv", "c.csv")):
        (mixed / name).write_bytes((folder / kind / ("a" + Path(name).suffix)).read_bytes())
    result = ingest(mixed)
    assert id_sets(result) == expected
    assert result.rows["duplicates"] == 2 * len(frame)  # the same events three times: one copy kept


# item 4: a column of the wrong type is a user error naming the file, the column and the type

@pytest.mark.parametrize("column, values, found", [
    ("timestamp", [True, False, True], "bool"),
    ("user_id", [True, False, True], "bool"),
    ("item_id", [b"a", b"b", b"c"], "binary"),
    ("item_id", [[1], [2], [3]], "list"),
    ("user_id", [{"a": 1}, {"a": 2}, {"a": 3}], "struct"),
    ("event_type", [1, 2, 3], "int64"),
    ("timestamp", pa.array([1, 2, 3], pa.duration("s")), "duration"),
])
def test_wrong_column_type_is_a_user_error(tmp_path, column, values, found):
    frame = events([1, 2, 3], [4, 5, 6])
    table = pa.Table.from_pandas(frame, preserve_index=False)
    array = values if isinstance(values, pa.Array) else pa.array(values)
    table = table.set_column(table.schema.get_field_index(column), column, array)
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    with pytest.raises(HomerankError) as error:
        ingest(path)
    message = error.value.message
    assert "typed.parquet" in message and repr(column) in message and found in message and "\n" not in message


@pytest.mark.parametrize("column, array", [
    ("timestamp", pa.array([1_790_000_000, 1_790_000_060, 1_790_000_120])),
    ("timestamp", pa.array([1_790_000_000.0, 1_790_000_060.5, 1_790_000_120.0])),
    ("timestamp", pa.array([pd.Timestamp("2026-10-01").date()] * 3, pa.date32())),
    ("timestamp", pa.array(["2026-10-01T00:00:00Z", "2026-10-01 00:01", "2026-10-01"])),
    ("event_type", pa.array(["view", "click", "view"]).dictionary_encode()),
    ("user_id", pa.array(["u1", "u2", "u3"]).dictionary_encode()),
    ("item_id", pa.array([4, 5, 6], pa.uint32())),
])
def test_accepted_column_types_are_read(tmp_path, column, array):
    table = pa.Table.from_pandas(events([1, 2, 3], [4, 5, 6]), preserve_index=False)
    table = table.set_column(table.schema.get_field_index(column), column, array)
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    assert ingest(path).rows["kept"] == 3


# item 5: one event far in the future does not move the reference time

def test_future_timestamps_are_quarantined_with_their_own_reason(tmp_path):
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    frame = events([1, 2, 3, 4], [5, 6, 7, 8])
    frame["timestamp"] = [DAY, now + pd.Timedelta(hours=1), now + pd.Timedelta(days=10), pd.Timestamp("2261-06-01")]
    path = tmp_path / "future.parquet"
    frame.to_parquet(path)
    result = ingest(path)
    assert result.reasons == {"future_timestamp": 2} and result.rows["kept"] == 2
    assert result.events.compute()[schema.TS].max() < now + pd.Timedelta(days=1)
    assert set(result.read_quarantine()[schema.SOURCE_ROW]) == {2, 3}
    assert ingest(path, future_tolerance_hours=None).rows["kept"] == 4
    assert ingest(path, future_tolerance_hours=24 * 30).reasons == {"future_timestamp": 1}


def test_future_timestamps_in_csv_and_epoch_numbers(tmp_path):
    path = tmp_path / "future.csv"
    path.write_text("user_id,item_id,event_type,timestamp\n1,2,view,2026-10-01\n1,3,view,2261-01-01T00:00:00\n"
                    "2,3,view,9000000000\n")  # epoch seconds in the year 2255
    assert ingest(path).reasons == {"future_timestamp": 2}


def test_future_tolerance_is_validated():
    with pytest.raises(ValueError):
        IngestConfig(future_tolerance_hours=-1)


# item 9: the catalogue and the merchandising file share the run's id form

def test_catalogue_ids_are_canonical(tmp_path):
    pd.DataFrame({"item_id": [500001.0, 500002.0], "category": ["a", "b"]}).to_parquet(tmp_path / "c.parquet")
    assert read_catalogue(str(tmp_path / "c.parquet"))["item_id"].tolist() == [500001, 500002]
    (tmp_path / "c.csv").write_text("item_id,category\n007,a\n500002.0,b\n")
    assert read_catalogue(str(tmp_path / "c.csv"))["item_id"].tolist() == ["007", "500002"]
    pd.DataFrame({"item_id": [1.0, 1.5], "category": ["a", "b"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(HomerankError, match=r"bad.parquet: column 'item_id'.*1.5"):
        read_catalogue(str(tmp_path / "bad.parquet"))


def test_merchandising_parquet_with_float_item_ids(tmp_path):
    path = tmp_path / "merch.parquet"
    pd.DataFrame({"rule": ["pin", "boost"], "item_id": [12.0, np.nan], "category": [None, "Shoes"],
                  "weight": [None, 1.0], "section": ["for_you", None],
                  "slot": pd.array([1, None], dtype="Int64")}).to_parquet(path)
    merch = load_merchandising(path, np.array([10, 11, 12]), np.array(["Shoes", "Shoes", "Books"]), ["for_you"],
                               pd.Timestamp("2026-10-01"))
    assert [(p.slot, p.position) for p in merch.pins] == [(1, 2)]
    as_text = load_merchandising(path, np.array(["10", "11", "12"], dtype=object),
                                 np.array(["Shoes", "Shoes", "Books"]), ["for_you"], pd.Timestamp("2026-10-01"))
    assert [(p.slot, p.position) for p in as_text.pins] == [(1, 2)]


def test_csv_log_with_the_generators_parquet_catalogue_runs_end_to_end(tmp_path):
    from homerank.engine.synthetic import SyntheticSpec, generate
    from homerank.jobs.cli import main

    generate(tmp_path / "g", SyntheticSpec(users=120, items=60, events=4000, users_per_partition=200, seed=5))
    log = tmp_path / "events.csv"
    pd.read_parquet(tmp_path / "g" / "events").to_csv(log, index=False)
    merch = tmp_path / "merch.csv"
    item = pd.read_parquet(tmp_path / "g" / "items.parquet")["item_id"].iloc[0]
    merch.write_text(f"rule,item_id,weight\nboost,{item}.0,1\n")
    out = tmp_path / "run"
    code = main(["run", "--input", str(log), "--out", str(out), "--quiet", "--device", "cpu",
                 "--set", f"ingest.catalogue={tmp_path / 'g' / 'items.parquet'}", "--set", "train.epochs=2",
                 "--set", "train.embedding_dim=8", "--set", "interactions.min_user_interactions=2",
                 "--set", "interactions.min_item_interactions=2", "--set", f"homepage.merchandising={merch}"])
    assert code == 0
    stats = json.loads((out / "homepage_stats.json").read_text())
    assert stats["merchandising"]["active_boosts"] == 1
    assert len(pd.read_parquet(out / "homepage")) > 0


def test_booleans_are_never_times_or_ids_row_by_row():
    raw = pd.DataFrame({"user_id": [1, 2], "item_id": [2, 3], "event_type": ["view", "view"],
                        "timestamp": [True, False]})
    for frame, reason in ((raw, "unparsable_timestamp"), (raw.assign(user_id=[True, False], timestamp=DAY),
                                                          "null_or_bad_user_id")):
        clean, rejected = validate_events(frame, "frame", ["view"], "int64")
        assert clean.empty and rejected[schema.REASON].tolist() == [reason, reason]


@pytest.mark.parametrize("catalogue_ids, run_ids", [
    ([500001, 500002, 500003], ["500001", "500002"]),        # the generator's catalogue, a CSV log
    (["500001", "500002.0", "500003"], [500001, 500002]),   # a CSV catalogue, a Parquet log
    ([500001.0, 500002.0, 500003.0], ["500001", "500002"]),  # a float catalogue
])
def test_catalogue_ids_take_the_runs_form(catalogue_ids, run_ids):
    from homerank.homepage.catalogue import build_catalogue
    from homerank.homepage.config import HomepageConfig

    run = pd.Series(run_ids)
    run = run.astype("int64") if isinstance(run_ids[0], int) else run.astype("string")
    item_index = pd.DataFrame({schema.ITEM: run, schema.ITEM_INDEX: [0, 1]})
    interactions = pd.DataFrame({schema.USER: [1, 2], schema.ITEM: run, schema.LAST_TS: [DAY, DAY]})
    edges = pd.DataFrame({schema.ITEM_INDEX: [0, 1], "split": ["train", "train"]})
    items = pd.DataFrame({schema.ITEM: catalogue_ids, "category": ["a", "b", "c"]})
    catalogue = build_catalogue(items, interactions, item_index, edges, DAY, HomepageConfig())
    assert [str(i) for i in catalogue.item_ids] == ["500001", "500002", "500003"]
    assert catalogue.model_index.tolist() == [0, 1, -1] and catalogue.category.tolist() == ["a", "b", "c"]


def test_catalogue_text_ids_in_an_integer_run_are_a_user_error():
    from homerank.homepage.catalogue import build_catalogue
    from homerank.homepage.config import HomepageConfig

    item_index = pd.DataFrame({schema.ITEM: [1, 2], schema.ITEM_INDEX: [0, 1]})
    interactions = pd.DataFrame({schema.USER: [1, 2], schema.ITEM: [1, 2], schema.LAST_TS: [DAY, DAY]})
    edges = pd.DataFrame({schema.ITEM_INDEX: [0, 1], "split": ["train", "train"]})
    with pytest.raises(HomerankError, match=r"catalogue \(ingest.catalogue\): column 'item_id'.*'SKU-9'"):
        build_catalogue(pd.DataFrame({schema.ITEM: ["1", "SKU-9"]}), interactions, item_index, edges, DAY,
                        HomepageConfig())
