"""Input fuzzing: malformed logs thrown at ingest never end in a traceback. Each generated file either
raises HomerankError naming the file, or is ingested with the conservation law
rows_in = kept + quarantined + duplicates and a reason for every quarantined row."""

import io
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homerank.engine import schema
from homerank.engine.backend import resolve_backend
from homerank.engine.config import IngestConfig
from homerank.engine.errors import HomerankError
from homerank.engine.ingest import ingest_events

CPU = resolve_backend("cpu")
OUTCOMES = {"ingested": 0, "user_error": 0}

text_cell = st.text(alphabet=string.printable + "éü漢\u2028", max_size=8)
id_cell = st.one_of(st.none(), st.integers(-10**20, 10**20), text_cell, st.floats(allow_nan=True))
time_cell = st.one_of(st.none(), st.sampled_from(["2026-01-01", "2026-13-45", "01/02/2026 10:00", "yesterday",
                                                  "1767225600", "-99999999999999", "2026-01-01T00:00:00+05:00",
                                                  "9999-12-31T23:59:59"]), st.integers(-10**12, 10**13))
event_cell = st.one_of(st.none(), st.sampled_from(["view", "CLICK", " cart ", "purchase", "", "wish"]), text_cell)
row = st.tuples(id_cell, id_cell, event_cell, time_cell)
columns = st.sampled_from([
    ["user_id", "item_id", "event_type", "timestamp"],
    ["user_id", "item_id", "event_type", "timestamp", "value"],
    ["item_id", "user_id", "timestamp", "event_type"],
    ["user_id", "item_id", "timestamp"],  # missing column
])


def check(path, files_written):
    try:
        result = ingest_events(str(path), IngestConfig(), CPU)
    except HomerankError as error:
        assert any(str(f) in error.message for f in files_written), error.message
        assert "\n" not in error.message
        OUTCOMES["user_error"] += 1
        return
    rows = result.rows
    assert rows["in"] == rows["kept"] + rows["quarantined"] + rows["duplicates"]
    assert result.read_quarantine()[schema.REASON].notna().all()
    events = result.events.compute()
    assert len(events) == rows["kept"] and events[schema.TS].notna().all()
    OUTCOMES["ingested"] += 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(row, max_size=25), columns, st.sampled_from(["csv", "csv-noheader", "csv-badquote", "parquet"]),
       st.booleans())
def test_fuzzed_files_never_crash(tmp_path, rows, cols, kind, duplicate):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    values = [dict(zip(["user_id", "item_id", "event_type", "timestamp"], r, strict=True)) for r in rows]
    frame = pd.DataFrame(values, columns=["user_id", "item_id", "event_type", "timestamp"], dtype=object)
    if "value" in cols:
        frame["value"] = ["3.5", "x"] * (len(frame) // 2) + ["1"] * (len(frame) % 2)
    frame = frame[[c for c in cols if c in frame.columns]]
    if duplicate and len(frame):
        frame = pd.concat([frame, frame.iloc[:3]], ignore_index=True)
    path = folder / ("log.parquet" if kind == "parquet" else "log.csv")
    if kind == "parquet":
        frame.astype("string").to_parquet(path)
    else:
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, header=kind != "csv-noheader")
        text = buffer.getvalue()
        if kind == "csv-badquote":
            text = text.replace(",", ',"', 1)
        path.write_text(text)
    check(path, [path])


def test_truncated_and_empty_parquet_and_zero_row_partitions(tmp_path):
    good = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "event_type": ["view", "view"],
                         "timestamp": pd.to_datetime(["2026-01-01", "2026-01-02"])})
    good.to_parquet(tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    for cut in np.linspace(1, len(data) - 1, 6).astype(int):
        broken = tmp_path / f"cut{cut}.parquet"
        broken.write_bytes(data[:cut])
        check(broken, [broken])
    empty_rows = tmp_path / "logs"
    empty_rows.mkdir()
    good.iloc[:0].to_parquet(empty_rows / "a.parquet")
    good.to_parquet(empty_rows / "b.parquet")
    result = ingest_events(str(empty_rows), IngestConfig(), CPU)
    assert result.rows == {"in": 2, "kept": 2, "quarantined": 0, "duplicates": 0}


def test_fuzzing_exercised_both_outcomes():
    # runs after the property test in file order: both paths must have been exercised
    assert OUTCOMES["ingested"] > 0 and OUTCOMES["user_error"] > 0, OUTCOMES
    print(f"fuzzed ingest outcomes: {OUTCOMES}")
