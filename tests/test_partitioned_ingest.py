"""The partitioned ingest: a single file is many pieces (Parquet row groups, CSV byte blocks cut at line ends),
and the result does not depend on how the input was cut: the same clean events, the same counts, and the same
quarantined rows with their exact source rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homerank.engine import ingest as ingest_module
from homerank.engine import schema
from homerank.engine.backend import CPU
from homerank.engine.config import IngestConfig
from homerank.engine.ingest import (
    InputFile,
    Piece,
    bundle_count,
    discover_files,
    ingest_events,
    pack_pieces,
    plan_pieces,
)


def dirty_log(rows: int, seed: int = 0) -> pd.DataFrame:
    """Events as text with a bad row every so often (null user, unknown type, bad time) and duplicates."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "user_id": rng.integers(0, 40, rows).astype(str),
        "item_id": rng.integers(0, 25, rows).astype(str),
        "event_type": rng.choice(["view", "click", "purchase"], rows),
        "timestamp": (pd.Timestamp("2026-10-01") + pd.to_timedelta(rng.integers(0, 10**6, rows), unit="s"))
        .strftime("%Y-%m-%dT%H:%M:%S"),
    })
    bad = rng.random(rows)
    frame.loc[bad < 0.03, "user_id"] = None
    frame.loc[(bad >= 0.03) & (bad < 0.06), "event_type"] = "hover"
    frame.loc[(bad >= 0.06) & (bad < 0.09), "timestamp"] = "not a time"
    duplicates = frame.sample(frac=0.05, random_state=seed)
    return pd.concat([frame, duplicates], ignore_index=True)


def summary(result) -> tuple:
    events = result.events.compute().sort_values(list(result.events.columns)).reset_index(drop=True)
    quarantine = result.read_quarantine().sort_values(schema.SOURCE_ROW).reset_index(drop=True)
    columns = [c for c in (schema.SOURCE_ROW, schema.REASON, schema.USER) if c in quarantine.columns]
    return result.rows, result.reasons, events, quarantine[columns]


def assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0] and a[1] == b[1]
    pd.testing.assert_frame_equal(a[2], b[2])
    pd.testing.assert_frame_equal(a[3], b[3])


def test_one_parquet_file_with_row_groups_is_many_pieces(tmp_path):
    frame = dirty_log(3000)
    path = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=250)
    pieces = plan_pieces(discover_files(str(path)), partition_rows=600, csv_block_bytes=2**30)
    assert len(pieces) == 5 and [p.row_offset for p in pieces] == [0, 750, 1500, 2250, 3000]
    assert sum(len(p.row_groups) for p in pieces) == pq.read_metadata(path).num_row_groups
    whole = ingest_events(str(path), IngestConfig(partition_rows=10**9), CPU, quarantine_dir=tmp_path / "q1")
    split = ingest_events(str(path), IngestConfig(partition_rows=600), CPU, quarantine_dir=tmp_path / "q2")
    assert whole.partitions == 1 and split.partitions == 5
    assert_same(summary(whole), summary(split))
    # the quarantined rows name their row in the file: the bad rows of the input, exactly
    bad = frame["user_id"].isna() | (frame["event_type"] == "hover") | (frame["timestamp"] == "not a time")
    assert sorted(split.read_quarantine()[schema.SOURCE_ROW]) == np.flatnonzero(bad.to_numpy()).tolist()
    assert len(list((tmp_path / "q2").glob("part-*.parquet"))) == 5  # written by each piece, not gathered


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 400), block=st.integers(1024, 6000), header_only_tail=st.booleans())
def test_csv_blocks_cut_at_line_ends_give_the_same_result(tmp_path_factory, rows, block, header_only_tail):
    folder = tmp_path_factory.mktemp("csv")
    frame = dirty_log(rows, seed=rows)
    text = frame.to_csv(index=False, lineterminator="\n")
    if header_only_tail:
        text = text.rstrip("\n")  # no line break after the last row
    path = folder / "log.csv"
    path.write_text(text)
    whole = ingest_events(str(path), IngestConfig(), CPU, quarantine_dir=folder / "q1")
    blocks = ingest_events(str(path), IngestConfig(csv_block_bytes=block), CPU, quarantine_dir=folder / "q2")
    assert whole.partitions == 1 and blocks.partitions >= min(len(text.encode()) // block, 2)
    assert_same(summary(whole), summary(blocks))
    assert whole.rows["in"] == len(frame)


def test_small_parquet_files_are_packed_into_partitions_and_keep_their_provenance(tmp_path, monkeypatch):
    """Many small files share partitions (one read, one validation, one quarantine part per partition), files of
    another column type are never packed with them, and every quarantined row still names its own file and row."""
    monkeypatch.setattr(ingest_module, "worker_count", lambda: 1)  # bundles capped by partition_rows alone
    folder = tmp_path / "log"
    folder.mkdir()
    frames = {}
    for number in range(7):
        frame = dirty_log(300 + 40 * number, seed=number)
        if number < 5:  # typed columns: integer ids where present, real timestamps where parsable
            frame = frame.assign(user_id=pd.to_numeric(frame["user_id"]).astype("Int64"))
        frames[f"part-{number}.parquet"] = frame
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"part-{number}.parquet")
    packed = ingest_events(str(folder), IngestConfig(partition_rows=1000), CPU, id_dtype="string",
                           quarantine_dir=tmp_path / "q1")
    alone = ingest_events(str(folder), IngestConfig(partition_rows=1), CPU, id_dtype="string",
                          quarantine_dir=tmp_path / "q2")
    assert alone.partitions == 7 and packed.partitions < 7
    assert len(list((tmp_path / "q1").glob("part-*.parquet"))) == packed.partitions
    assert_same(summary(packed), summary(alone))
    quarantine = packed.read_quarantine()
    for name, frame in frames.items():
        mine = quarantine[quarantine[schema.SOURCE_FILE].str.endswith(name)]
        bad = frame["user_id"].isna() | (frame["event_type"] == "hover") | (frame["timestamp"] == "not a time")
        assert sorted(mine[schema.SOURCE_ROW]) == np.flatnonzero(bad.to_numpy()).tolist(), name


def test_bundles_are_equal_and_a_multiple_of_the_workers():
    pieces = [Piece(number, None, 0, (0,), rows=125_000) for number in range(80)]  # type: ignore[arg-type]
    assert bundle_count(pieces, 2_000_000, 2) == 6  # 10^7 / 2·10^6 = 5, rounded up to a multiple of 2
    assert bundle_count(pieces, 2_000_000, 16) == 32  # two per worker
    assert bundle_count(pieces, 2_000_000, 10**9) == 80  # at most one per piece
    assert bundle_count([Piece(0, None, 0, byte_range=(0, 9))], 2_000_000, 4) == 1  # type: ignore[arg-type]
    schemas = {"f": pa.schema([("user_id", pa.int64())])}
    file = InputFile("f", "parquet")
    sizes = [125_000] * 80
    pieces = [Piece(number, file, 0, (0,), rows=rows) for number, rows in enumerate(sizes)]
    bundles = pack_pieces(pieces, 2_000_000, schemas, ["user_id"], bundles=6)
    rows = [sum(piece.rows or 0 for piece in bundle.pieces) for bundle in bundles]
    assert len(bundles) == 6 and sum(rows) == 10**7 and max(rows) - min(rows) <= 125_000
    assert [piece.number for bundle in bundles for piece in bundle.pieces] == list(range(80))  # order kept
    # a piece larger than a slot stays alone; nothing exceeds partition_rows
    pieces = [Piece(number, file, 0, (0,), rows=rows) for number, rows in enumerate([10, 10, 1_000, 10, 10])]
    bundles = pack_pieces(pieces, 1_000, schemas, ["user_id"], bundles=4)
    assert [[p.number for p in b.pieces] for b in bundles] == [[0, 1], [2], [3, 4]]
