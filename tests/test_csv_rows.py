"""Hostile CSV and header cases found by trying the ETL as a user would (2026-11-28): a row with more or fewer
cells than its header is quarantined as ``wrong_cell_count`` with its data row (pandas' reader had kept a long row's
first cells and dropped the rest without a word); a column homerank reads named twice in a header or a Parquet
schema is a user error; ``.tsv`` files are split at tabs; the job's error from inside a dask worker is one line,
without dask's "Compute Failed" traceback record."""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from homerank.engine import schema
from homerank.engine.backend import resolve_backend
from homerank.engine.config import IngestConfig
from homerank.engine.errors import GateError, HomerankError, UserErrorTaskFilter
from homerank.engine.ingest import ingest_events, read_columns
from homerank.engine.input_files import discover_files

CPU = resolve_backend("cpu")
HEADER = "user_id,item_id,event_type,timestamp\n"
GOOD = ["1,10,view,2026-09-01", "2,11,click,2026-09-02", "3,12,view,2026-09-03"]


def ingest(path: Path, **config) -> tuple[dict[str, int], pd.DataFrame, pd.DataFrame]:
    """(row counts, clean events, quarantined rows) of one ingest of ``path``."""
    result = ingest_events(str(path), IngestConfig(**config), CPU, quarantine_dir=path.parent / "quarantine")
    events = result.events.compute().sort_values([schema.USER, schema.ITEM]).reset_index(drop=True)
    return result.rows, events, result.read_quarantine().sort_values(schema.SOURCE_ROW).reset_index(drop=True)


def test_rows_with_more_or_fewer_cells_are_quarantined_at_their_rows(tmp_path):
    path = tmp_path / "log.csv"
    lines = [GOOD[0], "4,13,view,2026-09-04,surplus,cells", "5,14", '"6","15\nstill 15",view,2026-09-05',
             GOOD[1], "7,16,view,2026-09-06,", GOOD[2]]
    path.write_text(HEADER + "\n".join(lines) + "\n")
    rows, events, quarantine = ingest(path)
    assert rows == {"in": 7, "kept": 4, "quarantined": 3, "duplicates": 0}
    assert quarantine[schema.REASON].tolist() == ["wrong_cell_count"] * 3
    assert quarantine[schema.SOURCE_ROW].tolist() == [1, 2, 5]  # 0-based data rows; the quoted break is one row
    assert quarantine[schema.USER].isna().all()  # no cell of a malformed row is trusted
    assert events[schema.USER].tolist() == ["1", "2", "3", "6"]
    assert events[schema.ITEM].tolist() == ["10", "11", "12", "15\nstill 15"]


def test_csv_blocks_number_the_rows_of_every_block(tmp_path):
    """The same file read whole and in 1 KiB blocks (~5): the same quarantine, the same rows."""
    lines = [f"{u},{20 + u},view,2026-09-{1 + u % 28:02d}" for u in range(200)]
    lines[7] += ",extra"
    lines[131] = "131,151"
    path = tmp_path / "whole" / "log.csv"
    path.parent.mkdir()
    path.write_text(HEADER + "\n".join(lines) + "\n")
    blocked = tmp_path / "blocks" / "log.csv"
    blocked.parent.mkdir()
    blocked.write_text(path.read_text())
    whole = ingest(path)
    parts = ingest(blocked, csv_block_bytes=1024)
    assert whole[0] == parts[0] == {"in": 200, "kept": 198, "quarantined": 2, "duplicates": 0}
    assert whole[2][schema.SOURCE_ROW].tolist() == parts[2][schema.SOURCE_ROW].tolist() == [7, 131]
    pd.testing.assert_frame_equal(whole[1], parts[1])


def test_csv_cells_read_as_pandas_did(tmp_path):
    """Missing-value texts, quotes, a byte-order mark, CRLF line ends and gzip: as pandas' reader took them."""
    text = ('\ufeffuser_id,item_id,event_type,timestamp,value\r\n1,10,view,2026-09-01,NA\r\n'
            '"2","11","click","2026-09-02",""\r\nnull,12,view,2026-09-03,1.5\r\n3,N/A,view,2026-09-04,2\r\n')
    plain = tmp_path / "plain" / "log.csv"
    plain.parent.mkdir()
    plain.write_text(text, encoding="utf-8", newline="")
    packed = tmp_path / "packed" / "log.csv.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    for path in (plain, packed):
        rows, events, quarantine = ingest(path)
        assert rows == {"in": 4, "kept": 2, "quarantined": 2, "duplicates": 0}
        assert quarantine[schema.REASON].tolist() == ["null_or_bad_user_id", "null_or_bad_item_id"]
        assert events[schema.VALUE].isna().all()


def test_tsv_files_are_split_at_tabs(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text(HEADER.replace(",", "\t") + "\n".join(line.replace(",", "\t") for line in GOOD) + "\n")
    assert read_columns(discover_files(str(path))[0]) == HEADER.strip().split(",")
    rows, events, _ = ingest(path)
    assert rows["kept"] == 3 and events[schema.ITEM].tolist() == ["10", "11", "12"]


def test_a_read_column_named_twice_is_a_user_error(tmp_path):
    csv = tmp_path / "twice.csv"
    csv.write_text("user_id,item_id,user_id,event_type,timestamp\n1,10,2,view,2026-09-01\n")
    with pytest.raises(HomerankError, match=r"twice.csv: column 'user_id' appears 2 times in the header "
                                            r"\(columns 1, 3\)"):
        ingest(csv)
    parquet = tmp_path / "twice.parquet"
    table = pa.table([pa.array([1]), pa.array([10]), pa.array([11]), pa.array(["view"]), pa.array(["2026-09-01"])],
                     names=["user_id", "item_id", "item_id", "event_type", "timestamp"])
    pq.write_table(table, parquet)
    with pytest.raises(HomerankError, match=r"column 'item_id' appears 2 times in the schema \(columns 2, 3\)"):
        ingest(parquet)


def test_a_repeated_column_homerank_never_reads_is_left_alone(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("user_id,item_id,event_type,timestamp,note,note\n" + "\n".join(f"{line},a,b" for line in GOOD))
    rows, _, _ = ingest(path)
    assert rows["kept"] == 3


def record(exception_text: str) -> logging.LogRecord:
    """dask's worker record of a failed task (distributed/worker.py's format and arguments)."""
    return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1,
                             "Compute Failed\nKey:       %s\nState:     %s\nTask:  %s\nException: %r\nTraceback: %r\n",
                             ("key", "executing", "task", exception_text, "  File ..."), None)


def test_the_worker_record_of_a_user_error_is_dropped_and_others_kept():
    keep = UserErrorTaskFilter().filter
    assert not keep(record(repr(HomerankError("log.csv: could not be read"))))
    assert not keep(record(repr(GateError("gate failed"))))  # subclasses too
    assert keep(record(repr(ValueError("a bug"))))  # a real failure keeps its traceback
    assert keep(logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, "other %s", ("x",), None))


@pytest.mark.parametrize("processes", ["false", "true"])
def test_a_bad_file_read_in_a_worker_is_one_line(tmp_path, processes):
    """The whole command in its own process: stderr is the one error line, without dask's record of the task."""
    path = tmp_path / "junk.csv"
    path.write_bytes(HEADER.encode() + bytes(range(256)) * 4)
    result = subprocess.run(
        [sys.executable, "-m", "homerank.jobs.cli", "etl", "--input", str(path), "--out", str(tmp_path / "run"),
         "--device", "cpu", "--quiet", "--set", f"cluster.processes={processes}", "--set", "cluster.n_workers=2"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [f"homerank: error: {path}: could not be read (not utf-8 text at byte 165)"], result.stderr


@pytest.mark.parametrize("role", ["catalogue", "merchandising file", "feedback log"])
def test_the_small_csv_inputs_refuse_a_row_with_a_cell_too_many(tmp_path, role):
    """The catalogue, the merchandising file and a feedback log are read whole: a shifted row is exit 2 naming it."""
    from homerank.engine.feedback import read_feedback
    from homerank.engine.ingest import read_catalogue
    from homerank.homepage.merchandising import _read_table

    path = tmp_path / "table.csv"
    header = {"catalogue": "item_id,category,price", "merchandising file": "rule,item_id,category",
              "feedback log": "user_id,item_id,run_id"}[role]
    path.write_text(f"{header}\n1,\"a,b\",2\n2,shoes,3,4\n3,bags,5\n")
    read = {"catalogue": lambda: read_catalogue(str(path)), "merchandising file": lambda: _read_table(path),
            "feedback log": lambda: read_feedback(str(path), "csv", "int64")}[role]
    with pytest.raises(HomerankError, match=rf"table.csv: data row 1 \(from 0, after the header\) of the {role} has "
                                            r"4 cells, its header 3"):
        read()
    path.write_text(f"{header}\n1,\"a,b\",2\n")  # the quoted delimiter is one cell
    if role != "feedback log":
        read()


def test_a_catalogue_repeating_an_item_keeps_its_first_row_and_says_so(tmp_path, caplog):
    from homerank.engine.ingest import read_catalogue

    path = tmp_path / "items.csv"
    path.write_text("item_id,category,price\n1,shoes,10\n2,bags,20\n1,shoes,10\n2,hats,25\n3,bags,5\n2,bags,20\n")
    with caplog.at_level(logging.WARNING, logger="homerank.engine.ingest"):
        catalogue = read_catalogue(str(path))
    assert catalogue["item_id"].tolist() == ["1", "2", "3"]
    assert catalogue["category"].tolist() == ["shoes", "bags", "bags"]  # item 2's first row wins over "hats"
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "1 item(s) have rows with different values (e.g. item 2)" in messages
    assert "3 of 6 rows repeat an item id and are dropped (2 identical copies)" in messages
