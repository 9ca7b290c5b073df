"""Ingest: read behaviour logs (Parquet or CSV; a file, a directory or a glob) through dask, validate every
row, quarantine the bad ones with a reason, and drop exact duplicates.

Conservation law (checked and reported): ``rows_in == kept + quarantined + duplicates``.

Schema problems that make a whole file unusable (missing required column, unreadable or empty file) are
user errors: `HomerankError` naming the file and the column. Row problems (null id, unknown event type,
unparsable timestamp, non-numeric value) send the row to quarantine with a ``reason``, ``source_file`` and
``source_row`` (0-based data row inside that file).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.config import IngestConfig
from homerank.engine.errors import HomerankError
from homerank.engine.privacy import pseudonym_key, pseudonymise

log = logging.getLogger(__name__)

FileFormat = Literal["parquet", "csv"]
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
IdDtype = Literal["int64", "string"]


@dataclass(frozen=True)
class InputFile:
    path: str
    format: FileFormat


@dataclass
class Ingested:
    """Result of `ingest_events`.

    events: clean, de-duplicated events (dask, persisted) with columns user_id, item_id, event_type,
        timestamp (datetime64[ns], UTC-naive) and the optional session_id, value.
    quarantine: rejected rows as strings plus reason, source_file, source_row (pandas, on the host).
    rows: {"in", "kept", "quarantined", "duplicates"}.
    """

    events: dd.DataFrame
    quarantine: pd.DataFrame
    rows: dict[str, int]
    files: list[str] = field(default_factory=list)
    id_dtype: IdDtype = "string"
    reasons: dict[str, int] = field(default_factory=dict)


def _format_of(path: str, forced: str) -> FileFormat | None:
    if forced in ("parquet", "csv"):
        return forced  # type: ignore[return-value]
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def discover_files(path: str | os.PathLike[str], forced_format: str = "auto") -> list[InputFile]:
    """Expand a file, a directory (searched recursively) or a glob into the list of input files."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        candidates = sorted(glob.glob(text, recursive=True))
    elif os.path.isdir(text):
        candidates = sorted(
            str(p) for p in Path(text).rglob("*") if p.is_file() and not p.name.startswith((".", "_"))
        )
    elif os.path.isfile(text):
        candidates = [text]
    else:
        raise HomerankError(f"{text}: input not found (expected a Parquet/CSV file, a directory or a glob)")
    files = []
    for candidate in candidates:
        fmt = _format_of(candidate, forced_format)
        if fmt is None:
            if os.path.isfile(text):
                raise HomerankError(
                    f"{candidate}: cannot tell the format from the extension; use .parquet or .csv "
                    "or set ingest.format"
                )
            continue
        files.append(InputFile(candidate, fmt))
    if not files:
        raise HomerankError(f"{text}: no Parquet or CSV files found")
    return files


def read_columns(file: InputFile) -> list[str]:
    """Column names of one file, read from metadata/header only. Raises HomerankError if unreadable."""
    try:
        if file.format == "parquet":
            return list(pq.read_schema(file.path).names)
        if os.path.getsize(file.path) == 0:
            raise HomerankError(f"{file.path}: empty file (no CSV header)")
        return list(pd.read_csv(file.path, nrows=0).columns)
    except HomerankError:
        raise
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        kind = "Parquet" if file.format == "parquet" else "CSV"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HomerankError(f"{file.path}: not a readable {kind} file ({first_line})") from None


def check_required_columns(
    file: InputFile, columns: list[str], required: tuple[str, ...] = schema.REQUIRED_EVENT_COLUMNS
) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        found = ", ".join(repr(str(c))[:40] for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
        raise HomerankError(f"{file.path}: missing required column {missing[0]!r} (found: {found or 'none'})")


def _parquet_id_dtype(file: InputFile) -> IdDtype:
    arrow_schema = pq.read_schema(file.path)
    kinds = {pa.types.is_integer(arrow_schema.field(c).type) for c in (schema.USER, schema.ITEM)}
    return "int64" if kinds == {True} else "string"


def decide_id_dtype(files: list[InputFile], configured: str = "auto") -> IdDtype:
    """Integer ids stay integers when every file stores them as integers (Parquet); otherwise strings."""
    if configured in ("int64", "string"):
        return configured  # type: ignore[return-value]
    if all(f.format == "parquet" for f in files) and all(_parquet_id_dtype(f) == "int64" for f in files):
        return "int64"
    return "string"


def _read_raw(file: InputFile, columns: list[str]) -> pd.DataFrame:
    if file.format == "parquet":
        return pd.read_parquet(file.path, columns=columns)
    # CSV: read everything as text; typing happens in validation so a bad cell quarantines one row
    return pd.read_csv(file.path, usecols=columns, dtype=str, keep_default_na=True)


def _coerce_ids(values: pd.Series, id_dtype: IdDtype) -> tuple[pd.Series, pd.Series]:
    """Return (typed ids, bad mask). Nulls and, for int64, non-integer ids are bad."""
    bad = values.isna()
    if id_dtype == "int64" and pd.api.types.is_integer_dtype(values.dtype):
        return values.fillna(0).astype("int64"), bad
    if id_dtype == "string":
        typed = values.astype("string").str.strip()
        bad |= typed.isna() | (typed == "")
        return typed, bad
    numeric = pd.to_numeric(values, errors="coerce").astype("float64")
    integral = numeric.notna() & np.isfinite(numeric.astype("float64")) & (numeric == np.floor(numeric))
    bad |= ~integral
    typed = numeric.where(~bad, 0).astype("int64")
    return typed, bad


def _to_ns(parsed: pd.Series) -> pd.Series:
    """datetime64 of any unit -> datetime64[ns]; values outside the ns range (years ~1677-2262) become NaT."""
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    in_range = parsed.notna() & (parsed >= pd.Timestamp.min) & (parsed <= pd.Timestamp.max)
    return parsed.where(in_range).astype("datetime64[ns]")


def _parse_timestamps(values: pd.Series, unit: str) -> pd.Series:
    """Parse to datetime64[ns] (UTC, tz-naive); unparsable or out-of-range values become NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _to_ns(values)
    numeric = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_numeric_dtype(values) else values
    numeric = numeric.astype("float64")
    limit = {"s": 9.2e9, "ms": 9.2e12, "us": 9.2e15, "ns": 9.2e18}[unit]  # inside the datetime64[ns] range
    from_numbers = pd.to_datetime(numeric.where(numeric.abs() < limit), unit=unit, errors="coerce")
    from_numbers = _to_ns(from_numbers)
    if pd.api.types.is_numeric_dtype(values):
        return from_numbers
    text = values.astype("string").str.strip().where(numeric.isna())
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    retry = parsed.isna() & text.notna()
    if retry.any():
        parsed[retry] = pd.to_datetime(text[retry], errors="coerce", utc=True, format="mixed")
    return _to_ns(parsed).where(numeric.isna(), from_numbers)


def validate_events(
    raw: pd.DataFrame,
    source_file: str,
    event_types: list[str],
    id_dtype: IdDtype,
    timestamp_unit: str = "s",
    row_offset: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one raw partition into (clean events, quarantined rows).

    The first failing check names the reason: ``null_or_bad_user_id``, ``null_or_bad_item_id``,
    ``unknown_event_type``, ``unparsable_timestamp``, ``non_numeric_value``.
    """
    n = len(raw)
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")

    def flag(mask: pd.Series, why: str) -> None:
        reason.loc[mask & reason.isna()] = why

    users, bad_users = _coerce_ids(raw[schema.USER], id_dtype)
    flag(bad_users, "null_or_bad_user_id")
    items, bad_items = _coerce_ids(raw[schema.ITEM], id_dtype)
    flag(bad_items, "null_or_bad_item_id")
    events = raw[schema.EVENT].astype("string").str.strip().str.lower()
    flag(~events.isin(event_types).fillna(False).astype(bool), "unknown_event_type")
    timestamps = _parse_timestamps(raw[schema.TS], timestamp_unit)
    flag(timestamps.isna(), "unparsable_timestamp")
    clean = pd.DataFrame({schema.USER: users, schema.ITEM: items, schema.EVENT: events, schema.TS: timestamps})
    if schema.SESSION in raw.columns:
        clean[schema.SESSION] = raw[schema.SESSION].astype("string")
    if schema.VALUE in raw.columns:
        value = pd.to_numeric(raw[schema.VALUE], errors="coerce")
        flag(value.isna() & raw[schema.VALUE].notna(), "non_numeric_value")
        clean[schema.VALUE] = value.astype("float64")
    bad = reason.notna().to_numpy()
    rejected = raw.loc[bad].astype("string")
    rejected[schema.REASON] = reason[bad]
    rejected[schema.SOURCE_FILE] = source_file
    rejected[schema.SOURCE_ROW] = np.arange(row_offset, row_offset + n, dtype="int64")[bad]
    clean = clean.loc[~bad].reset_index(drop=True)
    clean[schema.EVENT] = clean[schema.EVENT].astype("string")
    return clean, rejected.reset_index(drop=True)


def _empty_clean(columns: list[str], id_dtype: IdDtype) -> pd.DataFrame:
    meta = {
        schema.USER: pd.Series(dtype=id_dtype),
        schema.ITEM: pd.Series(dtype=id_dtype),
        schema.EVENT: pd.Series(dtype="string"),
        schema.TS: pd.Series(dtype="datetime64[ns]"),
    }
    if schema.SESSION in columns:
        meta[schema.SESSION] = pd.Series(dtype="string")
    if schema.VALUE in columns:
        meta[schema.VALUE] = pd.Series(dtype="float64")
    return pd.DataFrame(meta)


def _read_and_validate(
    file: InputFile, columns: list[str], event_types: list[str], id_dtype: IdDtype, unit: str,
    pseudonym_key: bytes | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    try:
        raw = _read_raw(file, columns)
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HomerankError(f"{file.path}: could not be read ({first_line})") from None
    clean, rejected = validate_events(raw, file.path, event_types, id_dtype, unit)
    if pseudonym_key is not None:
        clean[schema.USER] = pseudonymise(clean[schema.USER], pseudonym_key)
        rejected[schema.USER] = pseudonymise(rejected[schema.USER], pseudonym_key)
    return clean, rejected, len(raw)


def _split_out(npartitions: int) -> int:
    """Output partitions of a group-by/dedupe: one for small inputs (no shuffle), more as input grows."""
    return 1 if npartitions <= 16 else npartitions // 8


def ingest_events(path: str, config: IngestConfig, backend: Backend, id_dtype: str = "auto") -> Ingested:
    """Read, validate and de-duplicate a behaviour log. See the module docstring for the guarantees."""
    files = discover_files(path, config.format)
    column_sets = []
    for file in files:
        columns = read_columns(file)
        check_required_columns(file, columns)
        column_sets.append(columns)
    optional = [c for c in schema.OPTIONAL_EVENT_COLUMNS if all(c in cols for cols in column_sets)]
    columns = list(schema.REQUIRED_EVENT_COLUMNS) + optional
    resolved_ids = decide_id_dtype(files, id_dtype)
    key = pseudonym_key() if config.pseudonymise_user_ids else None
    event_types = [e.strip().lower() for e in config.event_types]
    log.info("ingest: %d file(s), id dtype %s, columns %s", len(files), resolved_ids, columns)

    read = dask.delayed(_read_and_validate, nout=3, pure=True)
    # persist the per-file results once: the clean frames, the rejected rows and the row counts all come
    # from the same read, so no file is parsed twice
    parts = dask.persist(*[read(f, columns, event_types, resolved_ids, config.timestamp_unit, key) for f in files])
    meta = _empty_clean(columns, resolved_ids)
    if key is not None:
        meta[schema.USER] = meta[schema.USER].astype("string")
    clean = dd.from_delayed([p[0] for p in parts], meta=meta, verify_meta=False)
    clean = backend.on_backend(clean)
    deduped = clean.drop_duplicates(split_out=_split_out(clean.npartitions)).persist()
    rows_in, rejected_list = dask.compute(sum(p[2] for p in parts), [p[1] for p in parts])
    kept_before, kept = dask.compute(clean.shape[0], deduped.shape[0])
    quarantine = (
        pd.concat([r for r in rejected_list if len(r)], ignore_index=True)
        if any(len(r) for r in rejected_list)
        else pd.DataFrame(columns=[*columns, schema.REASON, schema.SOURCE_FILE, schema.SOURCE_ROW])
    )
    rows = {
        "in": int(rows_in),
        "kept": int(kept),
        "quarantined": len(quarantine),
        "duplicates": int(kept_before) - kept,
    }
    if rows["in"] != rows["kept"] + rows["quarantined"] + rows["duplicates"]:  # pragma: no cover - invariant
        raise AssertionError(f"row conservation violated: {rows}")
    reasons = quarantine[schema.REASON].value_counts().to_dict() if len(quarantine) else {}
    log.info("ingest: rows %s, quarantine reasons %s", rows, reasons)
    return Ingested(
        events=deduped,
        quarantine=quarantine,
        rows=rows,
        files=[f.path for f in files],
        id_dtype=resolved_ids,
        reasons={str(k): int(v) for k, v in reasons.items()},
    )


def read_catalogue(path: str) -> pd.DataFrame:
    """Read the optional item catalogue (Parquet or CSV). Must contain ``item_id``."""
    files = discover_files(path)
    frames = []
    for file in files:
        columns = read_columns(file)
        check_required_columns(file, columns, schema.CATALOGUE_REQUIRED)
        frames.append(pd.read_parquet(file.path) if file.format == "parquet" else pd.read_csv(file.path))
    return pd.concat(frames, ignore_index=True)


