"""The ETL's intermediates on disk (Parquet files read back one per partition) give the same frames and the same
outputs as persisted on the workers, and leave no files behind."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

from homerank.engine.intermediates import DISK_SHARE, Intermediates, choose, row_bytes


def _frame() -> dd.DataFrame:
    frame = pd.DataFrame({
        "user_id": pd.array(["u1", "u2", "u3", "u4", "u5", "u6"], dtype="string"),
        "item_id": [1, 2, 3, 4, 5, 6],
        "event_type": pd.Categorical(["view", "buy", "view", "view", "cart", "buy"],
                                     categories=["view", "cart", "buy", "search"]),
        "timestamp": pd.to_datetime([1, 2, 3, 4, 5, 6], unit="s"),
    })
    parts = [frame.iloc[:3], frame.iloc[3:3], frame.iloc[3:]]  # an empty partition in the middle
    return dd.from_map(lambda part: part, parts, meta=frame.iloc[:0], enforce_metadata=False)


def test_kept_on_disk_reads_back_the_same_partitions_and_dtypes(tmp_path):
    frame = _frame()
    kept, rows = Intermediates(tmp_path / "i").keep(frame, "events")
    assert rows == 6 and kept.npartitions == 3
    assert sorted(p.name for p in (tmp_path / "i" / "events").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for number in range(3):  # partition by partition, with the meta's categories (not only those in the file)
        got = kept.partitions[number].compute().reset_index(drop=True)
        pd.testing.assert_frame_equal(got, frame.partitions[number].compute().reset_index(drop=True))
    assert kept["event_type"].compute().cat.categories.tolist() == ["view", "cart", "buy", "search"]
    only = kept[["item_id"]].compute()  # a projected pass reads one column
    assert list(only.columns) == ["item_id"] and only["item_id"].tolist() == [1, 2, 3, 4, 5, 6]
    Intermediates(tmp_path / "i").close()
    assert not (tmp_path / "i").exists()


def test_kept_in_memory_counts_the_rows():
    kept, rows = Intermediates(None).keep(_frame(), "events")
    assert rows == 6 and len(kept.compute()) == 6


def test_kept_without_a_count_leaves_it_to_the_caller_in_memory_and_not_on_disk(tmp_path):
    kept, rows = Intermediates(None).keep(_frame(), "events", count=False)
    assert rows is None and kept["item_id"].compute().tolist() == [1, 2, 3, 4, 5, 6]
    kept, rows = Intermediates(tmp_path / "i").keep(_frame(), "events", count=False)
    assert rows == 6 and len(kept.compute()) == 6  # the write counts the rows anyway


def test_auto_chooses_disk_only_when_the_events_outgrow_the_workers(tmp_path):
    from distributed import Client, LocalCluster

    meta = _frame()._meta
    assert row_bytes(meta) == 48 + 8 + 4 + 8
    assert not choose("auto", 10**9, meta, tmp_path).on_disk  # no client: no known limit
    assert choose("disk", 10, meta, tmp_path).on_disk and not choose("memory", 10**9, meta, tmp_path).on_disk
    with LocalCluster(n_workers=1, processes=False, memory_limit="1GiB", dashboard_address=":0") as cluster, \
            Client(cluster):
        limit_rows = int(DISK_SHARE * 2**30 / row_bytes(meta))
        assert not choose("auto", limit_rows - 1000, meta, tmp_path).on_disk
        assert choose("auto", limit_rows + 1000, meta, tmp_path).on_disk


@pytest.mark.slow
def test_the_etl_writes_the_same_outputs_with_its_intermediates_on_disk(tiny_log, tmp_path):
    from homerank.jobs.cli import main

    common = ["--device", "cpu", "--quiet", "--set", "ingest.partition_rows=5000",
              "--set", "interactions.min_user_interactions=3", "--set", "interactions.min_item_interactions=3"]
    for mode in ("memory", "disk"):
        assert main(["etl", "--input", str(tiny_log / "events"), "--out", str(tmp_path / mode), *common,
                     "--set", f"cluster.intermediates={mode}"]) == 0
    for name in ("etl/edges", "etl/interactions", "etl/last_session", "etl/profiles", "user_index.parquet",
                 "item_index.parquet", "quarantine"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "memory" / name),
                                      pd.read_parquet(tmp_path / "disk" / name))
    leftovers = [p for p in (tmp_path / "disk").rglob("*") if "intermediates" in p.name]
    assert not leftovers, leftovers
    with dask.config.set(scheduler="sync"):  # the stats agree too (rows, k-core rounds, split)
        import json

        memory, disk = (json.loads((tmp_path / mode / "etl" / "stats.json").read_text()) for mode in ("memory", "disk"))
    for key in ("rows", "kcore", "split", "edges_all_time", "users_all_time", "items_all_time"):
        assert memory[key] == disk[key]
