import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homerank.engine import schema
from homerank.engine.backend import resolve_backend
from homerank.engine.config import IngestConfig
from homerank.engine.errors import HomerankError
from homerank.engine.ingest import discover_files, ingest_events, validate_events

CPU = resolve_backend("cpu")
TYPES = ["view", "click", "cart", "purchase"]


def write_csv(path, text):
    path.write_text(text)
    return path


def test_missing_column_names_file_and_column(tmp_path):
    bad = write_csv(tmp_path / "day1.csv", "user_id,item_id,timestamp\n1,2,2026-01-01\n")
    with pytest.raises(HomerankError) as info:
        ingest_events(str(bad), IngestConfig(), CPU)
    assert "day1.csv" in info.value.message and "'event_type'" in info.value.message


def test_missing_input_and_empty_file(tmp_path):
    with pytest.raises(HomerankError, match="input not found"):
        discover_files(tmp_path / "nope.parquet")
    empty = write_csv(tmp_path / "empty.csv", "")
    with pytest.raises(HomerankError, match="empty.csv: empty file"):
        ingest_events(str(empty), IngestConfig(), CPU)


def test_corrupt_parquet_is_a_user_error(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(HomerankError, match="broken.parquet: not a readable Parquet file"):
        ingest_events(str(broken), IngestConfig(), CPU)


def test_bad_rows_quarantined_with_reasons_and_duplicates_dropped(tmp_path):
    text = (
        "user_id,item_id,event_type,timestamp\n"
        "u1,i1,view,2026-01-01T10:00:00\n"
        "u1,i1,view,2026-01-01T10:00:00\n"  # exact duplicate
        ",i2,view,2026-01-01T10:00:00\n"  # null user
        "u2,i2,wishlist,2026-01-01T10:00:00\n"  # unknown event type
        "u2,i3,Purchase,not-a-date\n"  # bad timestamp (event type case is normalised)
        "u3,i3,PURCHASE,1767225600\n"  # epoch seconds
    )
    path = write_csv(tmp_path / "log.csv", text)
    result = ingest_events(str(path), IngestConfig(), CPU)
    assert result.rows == {"in": 6, "kept": 2, "quarantined": 3, "duplicates": 1}
    assert result.reasons == {"null_or_bad_user_id": 1, "unknown_event_type": 1, "unparsable_timestamp": 1}
    assert sorted(result.read_quarantine()[schema.SOURCE_ROW].tolist()) == [2, 3, 4]
    assert set(result.read_quarantine()[schema.SOURCE_FILE]) == {str(path)}
    events = result.events.compute().sort_values(schema.USER)
    assert events[schema.EVENT].tolist() == ["view", "purchase"]
    assert events[schema.TS].iloc[1] == pd.Timestamp("2026-01-01")


def test_reads_directory_and_glob_of_mixed_files(tmp_path):
    (tmp_path / "logs").mkdir()
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 20], "event_type": ["view", "click"],
                          "timestamp": pd.to_datetime(["2026-01-01", "2026-01-02"])})
    frame.to_parquet(tmp_path / "logs" / "a.parquet")
    frame.assign(user_id=[3, 4]).to_parquet(tmp_path / "logs" / "b.parquet")
    whole = ingest_events(str(tmp_path / "logs"), IngestConfig(), CPU)
    assert whole.rows["kept"] == 4 and whole.id_dtype == "int64"
    globbed = ingest_events(str(tmp_path / "logs" / "a*.parquet"), IngestConfig(), CPU)
    assert globbed.rows["kept"] == 2


cell = st.one_of(st.none(), st.text(max_size=6), st.integers(-5, 10**12).map(str))
rows = st.lists(
    st.tuples(
        st.one_of(cell, st.sampled_from(["u1", "u2", "u3"])),
        st.one_of(cell, st.sampled_from(["i1", "i2"])),
        st.one_of(st.none(), st.sampled_from(TYPES + ["VIEW", "hover", ""])),
        st.one_of(st.none(), st.sampled_from(["2026-01-01", "2026-01-02T03:04:05Z", "bad", "1767225600",
                                              "99999999999999999"])),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_conservation_law_on_arbitrary_rows(data):
    raw = pd.DataFrame(data, columns=["user_id", "item_id", "event_type", "timestamp"], dtype=object)
    clean, rejected = validate_events(raw, "gen.csv", TYPES, "string")
    assert len(clean) + len(rejected) == len(raw)
    assert rejected[schema.REASON].notna().all()
    assert clean[schema.USER].notna().all() and clean[schema.TS].notna().all()
    assert set(clean[schema.EVENT]) <= set(TYPES)
    deduped = clean.drop_duplicates()
    assert len(deduped) + (len(clean) - len(deduped)) + len(rejected) == len(raw)


def test_pseudonymised_ids_never_reach_outputs(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "log.csv", "user_id,item_id,event_type,timestamp\n"
                     "alice,i1,view,2026-01-01\nbob,i2,view,2026-01-01\n,i3,view,2026-01-01\n")
    config = IngestConfig(pseudonymise_user_ids=True)
    monkeypatch.delenv("HOMERANK_PSEUDONYM_KEY", raising=False)
    with pytest.raises(HomerankError, match="HOMERANK_PSEUDONYM_KEY"):
        ingest_events(str(path), config, CPU)
    monkeypatch.setenv("HOMERANK_PSEUDONYM_KEY", "a-secret-of-some-length")
    first = ingest_events(str(path), config, CPU).events.compute()
    again = ingest_events(str(path), config, CPU).events.compute()
    assert not set(first[schema.USER]) & {"alice", "bob"}
    assert all(u.startswith("u_") and len(u) == 18 for u in first[schema.USER])
    assert sorted(first[schema.USER]) == sorted(again[schema.USER])  # same key, same pseudonyms
    monkeypatch.setenv("HOMERANK_PSEUDONYM_KEY", "another-secret-entirely")
    other = ingest_events(str(path), config, CPU).events.compute()
    assert not set(other[schema.USER]) & set(first[schema.USER])


def test_temporary_quarantine_folders_do_not_outlive_the_result(tmp_path, monkeypatch):
    """Without quarantine_dir the rows go to a temporary folder: it exists while the result does, and is removed
    when the result is dropped or when ingestion fails (a user mistake) - no folder is left behind in either case."""
    import gc
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = write_csv(tmp_path / "log.csv", "user_id,item_id,event_type,timestamp\nu1,i1,view,2026-01-01\n,i2,view,"
                                           "2026-01-01\n")
    result = ingest_events(str(path), IngestConfig(), CPU)
    assert result.quarantine.parent == scratch and len(result.read_quarantine()) == 1
    del result
    gc.collect()
    assert list(scratch.iterdir()) == []
    import homerank.engine.ingest as ingest_module

    def fail(*args, **kwargs):
        assert len(list(scratch.iterdir())) == 1  # the folder exists when the failure comes
        raise HomerankError("a failure after the quarantine folder was made")

    monkeypatch.setattr(ingest_module, "pack_pieces", fail)
    with pytest.raises(HomerankError, match="after the quarantine folder"):
        ingest_events(str(path), IngestConfig(), CPU)
    assert list(scratch.iterdir()) == []


def test_parquet_event_types_read_as_a_dictionary_validate_like_plain_text(tmp_path):
    """Parquet pieces read ``event_type`` as a dictionary (a categorical): case, blanks, nulls, empty and unknown
    types must give the rows, types and reasons that plain text gives, in a single file and in packed files."""
    types = [" View", "CLICK ", None, "hover", "", "purchase", "cart", "view"]
    frame = pd.DataFrame({"user_id": range(len(types)), "item_id": [7] * len(types), "event_type": types,
                          "timestamp": pd.date_range("2026-01-01", periods=len(types), freq="h")})
    expected_clean, expected_rejected = validate_events(frame.astype({"event_type": object}), "x", TYPES, "int64")
    (tmp_path / "one").mkdir()
    frame.to_parquet(tmp_path / "one" / "a.parquet")
    (tmp_path / "two").mkdir()
    frame.iloc[:4].to_parquet(tmp_path / "two" / "a.parquet")
    frame.iloc[4:].to_parquet(tmp_path / "two" / "b.parquet")
    for folder in ("one", "two"):
        ingested = ingest_events(str(tmp_path / folder), IngestConfig(), CPU)
        clean = ingested.events.compute().sort_values(schema.USER)
        assert clean[schema.USER].tolist() == expected_clean[schema.USER].tolist()
        assert clean[schema.EVENT].astype(str).tolist() == expected_clean[schema.EVENT].astype(str).tolist()
        assert ingested.reasons == {"unknown_event_type": len(expected_rejected)}
        quarantined = ingested.read_quarantine().sort_values(schema.USER)
        assert quarantined[schema.EVENT].tolist() == expected_rejected[schema.EVENT].tolist()
