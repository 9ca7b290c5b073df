"""Ingest: read behaviour logs (Parquet or CSV; a file, a directory or a glob) through dask, validate every
row, quarantine the bad ones with a reason, and drop exact duplicates.

The input is cut into pieces, one dask partition each (`plan_pieces`): runs of Parquet row groups of about
``ingest.partition_rows`` rows (from the files' metadata, so a single large file is many partitions), and CSV
files as a whole or, above ``ingest.csv_block_bytes``, in byte blocks cut at line ends. Each piece is read,
validated and quarantined on a worker: its rejected rows are written there as one Parquet file of the
quarantine dataset, and only its row counts (a few numbers) come back to the client.

Conservation law (checked and reported): ``rows_in == kept + quarantined + duplicates``.

Schema problems that make a whole file unusable (missing required column, unreadable or empty file, a column
of a type that cannot hold its values) are user errors: `HomerankError` naming the file and the column. Row
problems (null or bad id, unknown event type, unparsable timestamp, a timestamp from the future, non-numeric
value, a CSV row with more or fewer cells than its header: ``wrong_cell_count``) send the row to quarantine with a
``reason``, ``source_file`` and ``source_row`` (0-based data row inside that file; for a CSV file split into
blocks, the data line: a quoted field holding a line break is not supported in such a file — keep those below the
block size).

Column types (Parquet, checked on the client from each file's schema before anything is read; a
dictionary-encoded column counts as its values' type, an all-null column is accepted and its rows quarantined):

    user_id, item_id   integer, float (integral values), string
    event_type         string
    timestamp          timestamp, date, integer or float epoch numbers (in ``ingest.timestamp_unit``), string

Anything else (bool, binary, list, struct, decimal, duration, ... — e.g. boolean timestamps, which would read as
1970 epoch seconds) is exit 2 naming the file, the column and the type found. CSV columns are text: their cells
are checked row by row.

Ids have one canonical form per run, the same for every piece, file and format (`canonical_ids`): the int
1000398, the integral float 1000398.0 and the text "1000398" or "1000398.0" are one id. ``ingest.id_dtype:
auto`` decides from the files' metadata alone, once on the client: int64 when every file is Parquet and stores
its ids as integers or floats, else strings. In string form an integer or an integral float is written as its
digits ("1000398", never "1000398.0") and a text id is kept as written, stripped, except that a trailing ".0"
after digits is dropped ("007" stays "007": leading zeros count in text ids). A float id that is not integral
(1.5), not finite or outside int64 is a bad id: the row is quarantined as ``null_or_bad_user_id`` /
``null_or_bad_item_id`` (in both forms, so the result does not depend on the form). With ``id_dtype: int64`` text
ids must be whole numbers (digits with an optional sign and ".0"); others are bad ids. The item catalogue
(`read_catalogue`) and the homepage's merchandising file use the same rule and are converted to the run's form.

Search rows: when every file has a ``query`` column and ``ingest.search_event`` is set (default ``search``), rows
of that event type are searches, not interactions (`validate_searches`): they need a user id, a timestamp and a
non-empty query (``empty_query`` otherwise; their item_id and value are ignored), and each piece's clean searches
(user_id, timestamp, query, session_id when the log has it) are written by its worker as one Parquet file of
``searches_dir``, never joining the events. Their count enters the conservation law:
``rows_in == kept + searches + quarantined + duplicates``. Without a ``query`` column nothing changes: a row of
type ``search`` is an ``unknown_event_type``.

Events later than the wall clock at ingest (UTC) plus ``ingest.future_tolerance_hours`` (default 24 h, which
covers any time-zone offset of a tz-naive log) are quarantined as ``future_timestamp``: one event in the year 2261
would otherwise become the run's reference time ("now" of time decay, trending and merchandising). ``null`` turns
the check off. Old timestamps are kept: an early event only sits at the start of its user's history, and no floor
is right for every log.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import re
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from homerank.engine import schema
from homerank.engine.config import IngestConfig
from homerank.engine.errors import HomerankError
from homerank.engine.ids import IdDtype, _plain_values, canonical_ids
from homerank.engine.input_files import (  # discover_files: callers import it here too
    InputFile,
    csv_delimiter,
    discover_files,
)
from homerank.engine.intermediates import Intermediates, Mode
from homerank.engine.intermediates import choose as choose_intermediates
from homerank.engine.partitioned import events_by_user, worker_count
from homerank.engine.privacy import pseudonym_key, pseudonymise

if TYPE_CHECKING:
    from homerank.engine.backend import Backend

log = logging.getLogger(__name__)

SessionDtype = Literal["Int64", "string"]  # nullable integers when every file stores them as integers


@dataclass
class Ingested:
    """Result of `ingest_events`.

    events: clean, de-duplicated events (dask; persisted on the workers, or read back from Parquet files: see
        ``intermediates``) with columns user_id, item_id,
        event_type, timestamp (datetime64[ns], UTC-naive) and the optional session_id, value; range-partitioned
        by user (`homerank.engine.partitioned.partition_by_user`: each user's events in one partition, the
        partitions in user order).
    newest: the newest clean event time (the reference time of weights and trends), from the pieces' counts.
    quarantine: the folder holding the rejected rows, one ``part-NNNNN.parquet`` per piece that had any (strings
        plus reason, source_file, source_row), written by the workers.
    rows: {"in", "kept", "quarantined", "duplicates"}, plus "searches" (clean search rows) when the log has them.
    searches: the folder of the clean search rows (one ``part-NNNNN.parquet`` per piece that had any), None when
        the log has no ``query`` column or ``ingest.search_event`` is null; search_quarantined: the search rows
        among the quarantined ones.
    intermediates: where ``events`` is kept (persisted on the workers, or Parquet files read back), for the ETL's
        later frames to be kept the same way (`homerank.engine.intermediates`).
    """

    events: dd.DataFrame
    quarantine: Path
    rows: dict[str, int]
    files: list[str] = field(default_factory=list)
    id_dtype: IdDtype = "string"
    reasons: dict[str, int] = field(default_factory=dict)
    partitions: int = 0
    newest: pd.Timestamp | None = None
    searches: Path | None = None
    search_quarantined: int = 0
    intermediates: Intermediates = field(default_factory=lambda: Intermediates(None))

    def read_quarantine(self) -> pd.DataFrame:
        """The rejected rows as one pandas frame (for small logs and tests; the stage never gathers them)."""
        parts = sorted(self.quarantine.glob("part-*.parquet"))
        if not parts:
            return pd.DataFrame(columns=[schema.REASON, schema.SOURCE_FILE, schema.SOURCE_ROW])
        return pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)


@dataclass(frozen=True)
class Piece:
    """One partition of the input: a run of Parquet row groups, or a CSV file or a byte block of one.

    ``row_offset`` is the 0-based data row of the piece's first row in its file; None for CSV blocks after the
    first (counted on the workers, see `_csv_row_offsets`)."""

    number: int
    file: InputFile
    row_offset: int | None = 0
    row_groups: tuple[int, ...] | None = None
    byte_range: tuple[int, int] | None = None
    rows: int | None = None  # known for Parquet (metadata), None for CSV


@dataclass(frozen=True)
class Bundle:
    """One dask partition of the input: one piece, or consecutive small Parquet pieces of one column schema packed
    up to ``ingest.partition_rows`` rows (a log of many small files is read in partitions of useful size: the
    per-partition fixed costs of reading, validating and shuffling are paid per bundle, not per file)."""

    number: int
    pieces: tuple[Piece, ...]


def read_columns(file: InputFile) -> list[str]:
    """Column names of one file, read from metadata/header only. Raises HomerankError if unreadable."""
    try:
        if file.format == "parquet":
            names = list(pq.read_schema(file.path).names)
        else:
            if os.path.getsize(file.path) == 0:
                raise HomerankError(f"{file.path}: empty file (no CSV header)")
            delimiter = csv_delimiter(file.path)
            names = list(pd.read_csv(file.path, nrows=0, sep=delimiter).columns)
            if len(set(names)) == len(names):  # pandas renames a repeated header cell "x" to "x.1": read them raw
                cells = pd.read_csv(file.path, header=None, nrows=1, dtype=str, keep_default_na=False,
                                    sep=delimiter).iloc[0]
                _refuse_repeated_columns(file, [str(cell) for cell in cells.tolist()])
        _refuse_repeated_columns(file, names)
        return names
    except HomerankError:
        raise
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        kind = "Parquet" if file.format == "parquet" else "CSV"
        raise HomerankError(f"{file.path}: not a readable {kind} file ({_safe_reason(exc)})") from None


# the columns homerank reads from an event log or a catalogue: one of them twice in a header is ambiguous
READ_COLUMNS = frozenset((*schema.REQUIRED_EVENT_COLUMNS, *schema.OPTIONAL_EVENT_COLUMNS, schema.QUERY,
                          *schema.CATALOGUE_REQUIRED, *schema.CATALOGUE_OPTIONAL))


def _refuse_repeated_columns(file: InputFile, names: list[str]) -> None:
    """A user error when a column homerank reads (`READ_COLUMNS`) appears more than once in ``names`` (which copy
    holds the data is anyone's guess); a repeated column it never reads is left alone."""
    for name in dict.fromkeys(name for name in names if name in READ_COLUMNS):
        cells = [number for number, cell in enumerate(names, start=1) if cell == name]
        if len(cells) > 1:
            where = "schema" if file.format == "parquet" else "header"
            raise HomerankError(f"{file.path}: column {name!r} appears {len(cells)} times in the {where} (columns "
                                f"{', '.join(map(str, cells))}); keep one, or rename the others")


def check_required_columns(
    file: InputFile, columns: list[str], required: tuple[str, ...] = schema.REQUIRED_EVENT_COLUMNS
) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise HomerankError(f"{file.path}: missing required column {missing[0]!r} ({_describe_header(columns)})")


COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]{0,39}")


def _describe_header(columns: list[str]) -> str:
    """The columns found, named only when they look like column names: a file given by mistake (a key, a
    password file) must not have its first line printed."""
    if not columns:
        return "found no columns"
    if all(COLUMN_NAME.fullmatch(str(c)) for c in columns):
        shown = ", ".join(repr(str(c)) for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
        return f"found: {shown}"
    return f"found {len(columns)} header cells that are not column names; is this the right file?"


def _safe_reason(exc: BaseException) -> str:
    """What went wrong reading a file, without quoting the file: quoted text is dropped from the parser's
    message, undecodable text is named as such."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not {exc.encoding} text at byte {exc.start}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"'[^']*'|\"[^\"]*\"|b'[^']*'", "...", text)
    text = re.sub(r"(Expected \d+ columns, got \d+): .*", r"\1", text)  # pyarrow's CSV errors quote the row
    return text[:160]


def _values_type(kind: pa.DataType) -> pa.DataType:
    """A dictionary-encoded column (a pandas categorical) is judged by the type of its values."""
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _id_type_ok(kind: pa.DataType) -> bool:
    return pa.types.is_null(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind) or _is_text(kind)


def _event_type_ok(kind: pa.DataType) -> bool:
    return pa.types.is_null(kind) or _is_text(kind)


def _timestamp_type_ok(kind: pa.DataType) -> bool:
    return (pa.types.is_null(kind) or pa.types.is_timestamp(kind) or pa.types.is_date(kind)
            or pa.types.is_integer(kind) or pa.types.is_floating(kind) or _is_text(kind))


ID_TYPES = (_id_type_ok, "integer, float (integral values) or string ids")
COLUMN_TYPES = {
    schema.USER: ID_TYPES,
    schema.ITEM: ID_TYPES,
    schema.EVENT: (_event_type_ok, "strings"),
    schema.TS: (_timestamp_type_ok, "timestamps, dates, epoch numbers (unit: ingest.timestamp_unit) or strings"),
    schema.QUERY: (_event_type_ok, "strings"),
}


def check_column_types(file: InputFile, arrow_schema: pa.Schema,
                       columns: tuple[str, ...] = schema.REQUIRED_EVENT_COLUMNS) -> None:
    """Raise HomerankError naming the file, the column and the type found when a Parquet column's type is not one
    `COLUMN_TYPES` accepts (read from the schema: nothing is read)."""
    for column in columns:
        accepts, expected = COLUMN_TYPES[column]
        for index in arrow_schema.get_all_field_indices(column):
            found = arrow_schema.field(index).type
            if not accepts(_values_type(found)):
                raise HomerankError(f"{file.path}: column {column!r} has type {str(found)[:80]}; expected {expected} "
                                    "(cast the column when writing the file)")


def _parquet_ids_are_numbers(arrow_schema: pa.Schema) -> bool:
    kinds = [_values_type(arrow_schema.field(c).type) for c in (schema.USER, schema.ITEM)]
    return all(pa.types.is_null(k) or pa.types.is_integer(k) or pa.types.is_floating(k) for k in kinds)


def decide_session_dtype(files: list[InputFile], schemas: dict[str, pa.Schema]) -> SessionDtype:
    """``session_id`` as nullable integers when every file is Parquet and stores it as integers (no text
    conversion of a column that is only compared), else as text."""
    if not files or any(f.format != "parquet" for f in files):
        return "string"
    kinds = [_values_type(schemas[f.path].field(schema.SESSION).type) for f in files]
    fits = (pa.uint8(), pa.uint16(), pa.uint32())  # unsigned 64-bit values may not fit an int64
    return "Int64" if all(pa.types.is_signed_integer(k) or k in fits or pa.types.is_null(k) for k in kinds) else (
        "string")


def decide_id_dtype(files: list[InputFile], configured: str = "auto",
                    schemas: dict[str, pa.Schema] | None = None) -> IdDtype:
    """The run's id form, decided once from metadata: int64 when every file is Parquet and stores its ids as
    integers or floats (integral floats are integers, see `canonical_ids`); otherwise strings, the canonical text
    form (a CSV file's ids are text, and proving them all integers would take a pass over every row)."""
    if configured in ("int64", "string"):
        return configured  # type: ignore[return-value]
    if any(f.format != "parquet" for f in files):
        return "string"
    schemas = schemas or {}
    numeric = all(_parquet_ids_are_numbers(schemas.get(f.path) or pq.read_schema(f.path)) for f in files)
    return "int64" if numeric else "string"


def _to_ns(parsed: pd.Series) -> pd.Series:
    """datetime64 of any unit -> datetime64[ns]; values outside the ns range (years ~1677-2262) become NaT."""
    if parsed.dtype == "datetime64[ns]":  # every value fits; missing ones are NaT already
        return parsed
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    in_range = parsed.notna() & (parsed >= pd.Timestamp.min) & (parsed <= pd.Timestamp.max)
    return parsed.where(in_range).astype("datetime64[ns]")


def _parse_timestamps(values: pd.Series, unit: str) -> pd.Series:
    """Parse to datetime64[ns] (UTC, tz-naive); unparsable or out-of-range values become NaT. Booleans are not
    times (as numbers they would be 1970 epoch seconds): NaT."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
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
    source_file: str | pd.Categorical,
    event_types: list[str],
    id_dtype: IdDtype,
    timestamp_unit: str = "s",
    row_offset: int | np.ndarray = 0,
    latest: pd.Timestamp | None = None,
    session_dtype: SessionDtype = "string",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one raw partition into (clean events, quarantined rows).

    The first failing check names the reason: ``null_or_bad_user_id``, ``null_or_bad_item_id``,
    ``unknown_event_type``, ``unparsable_timestamp``, ``future_timestamp`` (later than ``latest``, tz-naive UTC;
    None: no limit), ``non_numeric_value``. Ids take the ``id_dtype`` form of `canonical_ids`.

    ``source_file`` / ``row_offset``: the file of every row and the 0-based data row of the first one (scalars),
    or one value per row (a categorical of file names and an (N,) array of rows: packed files).
    """
    n = len(raw)
    reason = np.zeros(n, dtype=np.int8)  # 0: clean, else 1 + the index of the first failing check in REASONS

    def flag(mask: pd.Series | np.ndarray, why: str) -> None:
        reason[np.asarray(mask, dtype=bool) & (reason == 0)] = REASONS.index(why) + 1

    users, bad_users = canonical_ids(raw[schema.USER], id_dtype)
    flag(bad_users, "null_or_bad_user_id")
    items, bad_items = canonical_ids(raw[schema.ITEM], id_dtype)
    flag(bad_items, "null_or_bad_item_id")
    event_codes = event_type_codes(raw[schema.EVENT], event_types)
    flag(event_codes < 0, "unknown_event_type")
    timestamps = _parse_timestamps(raw[schema.TS], timestamp_unit)
    flag(timestamps.isna(), "unparsable_timestamp")
    if latest is not None:
        flag((timestamps > latest).fillna(False), "future_timestamp")
    events = pd.Categorical.from_codes(np.maximum(event_codes, 0), dtype=event_dtype(event_types),
                                       validate=False)  # codes in 0..T-1 by construction
    clean = pd.DataFrame({schema.USER: users, schema.ITEM: items, schema.EVENT: events, schema.TS: timestamps})
    if schema.SESSION in raw.columns:
        clean[schema.SESSION] = raw[schema.SESSION].astype(session_dtype)
    if schema.VALUE in raw.columns:
        value = pd.to_numeric(raw[schema.VALUE], errors="coerce")
        flag(value.isna() & raw[schema.VALUE].notna(), "non_numeric_value")
        clean[schema.VALUE] = value.astype("float64")
    bad = reason > 0
    if bad.any():
        clean = clean.take(np.flatnonzero(~bad)).reset_index(drop=True)
    return clean, _rejected_rows(raw, reason, REASONS, source_file, row_offset)


def _rejected_rows(raw: pd.DataFrame, reason: np.ndarray, reasons: tuple[str, ...],
                   source_file: str | pd.Categorical, row_offset: int | np.ndarray) -> pd.DataFrame:
    """The rows of ``raw`` with a reason code (``reason`` (N,) int8: 0 clean, else 1 + index into ``reasons``), as
    text, with ``reason``, ``source_file`` and ``source_row``."""
    bad = reason > 0
    rejected = raw.take(np.flatnonzero(bad)).astype("string")
    rejected[schema.REASON] = pd.array(np.asarray(reasons, dtype=object)[reason[bad] - 1], dtype="string")
    if isinstance(source_file, str):
        rejected[schema.SOURCE_FILE] = source_file
    else:
        rejected[schema.SOURCE_FILE] = pd.array(np.asarray(source_file[bad], dtype=object), dtype="string")
    n = len(raw)
    rows = row_offset if isinstance(row_offset, np.ndarray) else np.arange(row_offset, row_offset + n, dtype="int64")
    rejected[schema.SOURCE_ROW] = rows[bad]
    return rejected.reset_index(drop=True)


REASONS = ("null_or_bad_user_id", "null_or_bad_item_id", "unknown_event_type", "unparsable_timestamp",
           "future_timestamp", "non_numeric_value")
SEARCH_REASONS = ("null_or_bad_user_id", "unparsable_timestamp", "future_timestamp", "empty_query")


def validate_searches(
    raw: pd.DataFrame,
    source_file: str | pd.Categorical,
    id_dtype: IdDtype,
    timestamp_unit: str = "s",
    row_offset: int | np.ndarray = 0,
    latest: pd.Timestamp | None = None,
    session_dtype: SessionDtype = "string",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw search rows (every row's event type is ``ingest.search_event``) into (clean searches, quarantined
    rows), with the checks and provenance of `validate_events`.

    Reasons, the first failing check: ``null_or_bad_user_id``, ``unparsable_timestamp``, ``future_timestamp``,
    ``empty_query`` (null, or only spaces). The item_id and value of a search are not read (a search names no
    item). Clean columns: user_id (``id_dtype`` form), timestamp (datetime64[ns]), query (stripped text, "string"
    dtype) and session_id when ``raw`` has it."""
    n = len(raw)
    reason = np.zeros(n, dtype=np.int8)

    def flag(mask: pd.Series | np.ndarray, why: str) -> None:
        reason[np.asarray(mask, dtype=bool) & (reason == 0)] = SEARCH_REASONS.index(why) + 1

    users, bad_users = canonical_ids(raw[schema.USER], id_dtype)
    flag(bad_users, "null_or_bad_user_id")
    timestamps = _parse_timestamps(raw[schema.TS], timestamp_unit)
    flag(timestamps.isna(), "unparsable_timestamp")
    if latest is not None:
        flag((timestamps > latest).fillna(False), "future_timestamp")
    query = _plain_values(raw[schema.QUERY]).astype("string").str.strip()
    flag((query.isna() | (query == "")).fillna(True), "empty_query")
    clean = pd.DataFrame({schema.USER: users, schema.TS: timestamps, schema.QUERY: query})
    if schema.SESSION in raw.columns:
        clean[schema.SESSION] = raw[schema.SESSION].astype(session_dtype)
    clean = clean.loc[reason == 0].reset_index(drop=True)
    return clean, _rejected_rows(raw, reason, SEARCH_REASONS, source_file, row_offset)


def split_searches(raw: pd.DataFrame, source_file: str | pd.Categorical, row_offset: int | np.ndarray,
                   search_event: str) -> tuple[pd.DataFrame, Any, Any, pd.DataFrame | None, Any, Any]:
    """(events, their source files, their rows, searches, their source files, their rows): the rows of ``raw``
    whose event type is ``search_event`` (stripped, lower-cased) apart from the others, each with its provenance
    (`validate_events`' ``source_file`` / ``row_offset`` forms). No search row: ``raw`` and its provenance as given
    (no copy) and None."""
    is_search = event_type_codes(raw[schema.EVENT], [search_event]) == 0
    if not is_search.any():
        return raw, source_file, row_offset, None, None, None
    rows = row_offset if isinstance(row_offset, np.ndarray) else np.arange(row_offset, row_offset + len(raw),
                                                                           dtype="int64")
    files = source_file if isinstance(source_file, str) else None

    def part(mask: np.ndarray) -> tuple[pd.DataFrame, Any, Any]:
        return (raw.loc[mask].reset_index(drop=True), files if files is not None else source_file[mask],
                rows[mask])

    return (*part(~is_search), *part(is_search))


def event_dtype(event_types: list[str]) -> pd.CategoricalDtype:
    """The clean events' ``event_type``: a categorical over the configured types, in their configured order."""
    return pd.CategoricalDtype(list(event_types))


def event_type_codes(values: pd.Series, event_types: list[str]) -> np.ndarray:
    """(N,) position of each value in ``event_types`` after stripping and lower-casing, -1 when it is none of them
    (or missing). The text work is done once per distinct value, not once per row."""
    if isinstance(values.dtype, pd.CategoricalDtype):  # a dictionary-read column: its codes are the factorisation
        codes, distinct = values.cat.codes.to_numpy(), values.cat.categories
    else:
        codes, distinct = pd.factorize(values, use_na_sentinel=True)
    if len(distinct) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    normalised = pd.Series(np.asarray(distinct, dtype=object)).astype("string").str.strip().str.lower()
    lookup = pd.Index(event_types).get_indexer(normalised.fillna(""))
    return np.where(codes >= 0, lookup[np.maximum(codes, 0)], -1).astype(np.int64)


def _empty_clean(columns: list[str], id_dtype: IdDtype, event_types: list[str],
                 session_dtype: SessionDtype = "string") -> pd.DataFrame:
    meta = {
        schema.USER: pd.Series(dtype=id_dtype),
        schema.ITEM: pd.Series(dtype=id_dtype),
        schema.EVENT: pd.Series(dtype=event_dtype(event_types)),
        schema.TS: pd.Series(dtype="datetime64[ns]"),
    }
    if schema.SESSION in columns:
        meta[schema.SESSION] = pd.Series(dtype=session_dtype)
    if schema.VALUE in columns:
        meta[schema.VALUE] = pd.Series(dtype="float64")
    return pd.DataFrame(meta)


def plan_pieces(files: list[InputFile], partition_rows: int, csv_block_bytes: int) -> list[Piece]:
    """Cut the input files into pieces of about ``partition_rows`` rows (Parquet, by row groups from the files'
    metadata) or ``csv_block_bytes`` bytes (CSV, at line ends). Reads metadata and a few bytes per block only."""
    pieces: list[Piece] = []
    for file in files:
        if file.format == "parquet":
            metadata = pq.read_metadata(file.path)
            group, rows, offset = [], 0, 0
            for index in range(metadata.num_row_groups):
                group.append(index)
                rows += metadata.row_group(index).num_rows
                if rows >= partition_rows or index == metadata.num_row_groups - 1:
                    pieces.append(Piece(len(pieces), file, offset, tuple(group), rows=rows))
                    offset, group, rows = offset + rows, [], 0
            if metadata.num_row_groups == 0:
                pieces.append(Piece(len(pieces), file, 0, (), rows=0))
            continue
        size = os.path.getsize(file.path)
        if size <= csv_block_bytes:
            pieces.append(Piece(len(pieces), file, 0))
            continue
        for number, (start, end) in enumerate(_csv_blocks(file.path, size, csv_block_bytes)):
            pieces.append(Piece(len(pieces), file, 0 if number == 0 else None, byte_range=(start, end)))
    return pieces


BUNDLES_PER_WORKER = 2  # small Parquet files are packed into at least this many bundles per dask worker


def bundle_count(pieces: list[Piece], partition_rows: int, workers: int) -> int:
    """How many bundles the Parquet pieces' rows R are packed into: B = max(ceil(R / partition_rows),
    ``BUNDLES_PER_WORKER`` x workers), rounded up to a multiple of the workers (one task per bundle: 5 bundles on
    2 workers take as long as 6), at most one per piece. 10^7 rows in 80 files, 2 workers: 6 bundles of ~1.67·10^6
    rows (not 5 of 2·10^6 and one of 0.4·10^6); 16 workers: 32 bundles."""
    parquet = [piece for piece in pieces if piece.rows is not None]
    rows = sum(piece.rows or 0 for piece in parquet)
    workers = max(workers, 1)
    wanted = max(-(-rows // partition_rows), BUNDLES_PER_WORKER * workers)
    return max(1, min(-(-wanted // workers) * workers, len(parquet)))


def pack_pieces(pieces: list[Piece], partition_rows: int, schemas: dict[str, pa.Schema], columns: list[str],
                bundles: int = 1) -> list[Bundle]:
    """Consecutive Parquet pieces whose files have the same types in ``columns`` share a bundle; CSV pieces are
    bundles of their own. The Parquet rows R are cut into ``bundles`` (`bundle_count`) slots of R / B rows: a piece
    belongs to the slot of its middle row, and a bundle never holds more than ``partition_rows`` rows (a large
    piece stays alone), so the bundles come out about equal."""
    total = sum(piece.rows or 0 for piece in pieces if piece.rows is not None)
    packed: list[list[Piece]] = []
    rows, before = 0, 0
    signature = slot = None
    for piece in pieces:
        kind = piece_slot = None
        if piece.file.format == "parquet" and piece.rows is not None:
            file_schema = schemas[piece.file.path]
            kind = tuple(str(file_schema.field(c).type) for c in columns if c in file_schema.names)
            piece_slot = int((before + piece.rows / 2) * bundles // max(total, 1))
            before += piece.rows
        if (packed and kind is not None and kind == signature and piece_slot == slot
                and rows + (piece.rows or 0) <= partition_rows):
            packed[-1].append(piece)
            rows += piece.rows or 0
            continue
        packed.append([piece])
        rows, signature, slot = (piece.rows or 0), kind, piece_slot
    return [Bundle(number, tuple(members)) for number, members in enumerate(packed)]


def _csv_blocks(path: str, size: int, block: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of about ``block`` bytes, each starting at a line start (the first at 0)."""
    starts = [0]
    with open(path, "rb") as handle:
        position = block
        while position < size:
            handle.seek(position)
            handle.readline()  # finish the line the boundary falls in
            start = handle.tell()
            if start >= size:
                break
            if start > starts[-1]:
                starts.append(start)
            position = start + block
    return list(zip(starts, [*starts[1:], size], strict=True))


def _count_lines(path: str, start: int, end: int) -> int:
    """Line breaks in bytes [start, end) of a file (read in 16 MiB chunks)."""
    count = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            chunk = handle.read(min(left, 1 << 24))
            if not chunk:
                break
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count


def _csv_row_offsets(pieces: list[Piece]) -> list[Piece]:
    """Fill in the row offsets of CSV blocks: every block's line breaks are counted on the workers (a list of
    numbers comes back), and a block's offset is the data lines before it in its file."""
    blocks = [p for p in pieces if p.byte_range is not None]
    if not blocks:
        return pieces
    counts = dask.compute(*[dask.delayed(_count_lines)(p.file.path, *p.byte_range) for p in blocks])
    offsets: dict[int, int] = {}
    running: dict[str, int] = {}
    for piece, count in zip(blocks, counts, strict=True):
        offsets[piece.number] = running.get(piece.file.path, -1)  # the first block's first line is the header
        running[piece.file.path] = offsets[piece.number] + count
    return [replace(p, row_offset=max(offsets[p.number], 0)) if p.byte_range is not None else p for p in pieces]


MALFORMED = "_malformed"  # a CSV piece's marker of rows whose cells do not match the header (`_read_csv_text`)
# the cells pandas' CSV reader reads as missing (its default ``na_values``): kept when the reader became pyarrow's
CSV_NULLS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
             "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def _read_piece(piece: Piece, columns: list[str]) -> pd.DataFrame:
    """The raw rows of one piece (CSV as text: typing happens in validation, so a bad cell quarantines a row; a
    CSV piece with malformed rows also has the `MALFORMED` column, see `_read_csv_text`)."""
    path = piece.file.path
    if piece.file.format == "parquet":
        return _read_parquet_piece(piece, columns).to_pandas()
    if piece.byte_range is None:
        return _read_csv_text(_csv_bytes(path), columns, csv_delimiter(path))
    start, end = piece.byte_range
    with open(path, "rb") as handle:
        header = handle.readline()
        handle.seek(start)
        body = handle.read(end - start)
    if start > 0:
        body = header + body
    return _read_csv_text(body, columns, csv_delimiter(path))


def _csv_bytes(path: str) -> bytes:
    """A whole CSV file's bytes, decompressed by its name's last suffix as pandas' reader did (.gz, .bz2, .xz, .zst;
    .zip holding one file); any other name is read as it is."""
    suffix = Path(path).suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if not name.endswith("/")]
            if len(names) != 1:
                raise ValueError(f"a zip archive must hold one CSV file, this one holds {len(names)}")
            return archive.read(names[0])
    if suffix == ".zst":
        with pa.input_stream(path, compression="zstd") as stream:
            return stream.read()
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)
    with opener(path, "rb") as handle:
        return handle.read()


def _read_csv_text(body: bytes, columns: list[str], delimiter: str = ",") -> pd.DataFrame:
    """``columns`` of a CSV text (its bytes, header first, cells split at ``delimiter``) as text, one row per record.
    Text that is not UTF-8 is refused whole (`UnicodeDecodeError`, as pandas' reader did).

    A record whose number of cells differs from the header's is malformed: an unquoted comma in a value shifts
    every cell after it, a cut line leaves cells out, so no cell of it can be trusted (pandas' reader took a long
    row's first cells and dropped the rest without a word). pyarrow's reader hands each such record to
    ``invalid_row_handler``; it keeps its place as a row of missing cells with `MALFORMED` set, which
    `_ingest_bundle` quarantines as ``wrong_cell_count`` (so every row keeps its data row number). The column is
    there only when some record is malformed. Missing cells are pandas' default NA texts (`CSV_NULLS`), quoted or
    not; a quoted value may hold line breaks."""
    import pyarrow.csv as pa_csv

    table, bad = _csv_records(body, delimiter, pa_csv.ReadOptions(use_threads=False), pa_csv.ConvertOptions(
        include_columns=columns, column_types=dict.fromkeys(columns, pa.string()), null_values=list(CSV_NULLS),
        strings_can_be_null=True))
    if table is None:  # a header without a line end: no rows, as pandas read it
        return pd.DataFrame({column: pd.Series(dtype="str") for column in columns})
    frame = table.to_pandas()
    if not bad:
        return frame
    malformed = [row for row, _, _ in bad]
    total = len(frame) + len(malformed)
    frame.index = np.delete(np.arange(total), malformed)
    frame = frame.reindex(np.arange(total))
    frame[MALFORMED] = np.isin(np.arange(total), malformed)
    return frame


def _csv_records(body: bytes, delimiter: str, read_options: Any, convert_options: Any
                 ) -> tuple[pa.Table | None, list[tuple[int, int, int]]]:
    """pyarrow's CSV reader over ``body`` with every record whose number of cells differs from the header's left
    out and listed as (0-based data row, its cells, the header's cells); the table is None for a header without a
    line end (no rows). Text that is not UTF-8 raises `UnicodeDecodeError` first (the reader would fail on the first
    such row, quoting it)."""
    import pyarrow.csv as pa_csv

    body.decode("utf-8")
    malformed: list[tuple[int, int, int]] = []

    def skip(row: Any) -> str:
        malformed.append((row.number - 2, row.actual_columns, row.expected_columns))  # record 1 is the header
        return "skip"

    try:
        table = pa_csv.read_csv(pa.BufferReader(body), read_options=read_options, convert_options=convert_options,
                                parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=skip,
                                                                  newlines_in_values=True))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" not in str(exc):
            raise
        return None, []
    return table, malformed


def refuse_malformed_csv(path: str, what: str) -> None:
    """A user error naming the first record of the CSV file ``path`` whose number of cells differs from its header's
    (``what`` names the file's role, e.g. "catalogue"): for the small CSV inputs read whole by pandas (the catalogue,
    the merchandising file, feedback logs), where a shifted row would be taken as it is. Not UTF-8: the same error
    as the event log's."""
    import pyarrow.csv as pa_csv

    body, delimiter = _csv_bytes(path), csv_delimiter(path)
    try:
        names = [str(number) for number in range(len(pd.read_csv(io.BytesIO(body), nrows=0, sep=delimiter).columns))]
        _, found = _csv_records(body, delimiter,
                                pa_csv.ReadOptions(use_threads=False, column_names=names, skip_rows=1),
                                pa_csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())))
    except pd.errors.EmptyDataError:
        return
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise HomerankError(f"{path}: could not be read as the {what} ({_safe_reason(exc)})") from None
    if found:
        row, cells, header = found[0]
        raise HomerankError(f"{path}: data row {row} (from 0, after the header) of the {what} has {cells} cells, its "
                            f"header {header} (a value holding the delimiter must be quoted); {len(found)} such row(s)")


def _pop_malformed(raw: pd.DataFrame, source_file: Any, source_row: Any, rejected: list[pd.DataFrame]
                   ) -> tuple[pd.DataFrame, Any, Any]:
    """Take the malformed CSV rows (`MALFORMED`) out of ``raw``, their rejected rows (reason ``wrong_cell_count``)
    appended to ``rejected``, and drop the marker column; the rows left with their provenance (an (N,) array of
    rows once any row is gone)."""
    if MALFORMED not in raw.columns:
        return raw, source_file, source_row
    bad = raw.pop(MALFORMED).to_numpy(dtype=bool)
    rejected.append(_rejected_rows(raw, bad.astype(np.int8), ("wrong_cell_count",), source_file, source_row))
    rows = source_row if isinstance(source_row, np.ndarray) else np.arange(source_row, source_row + len(raw),
                                                                            dtype="int64")
    keep = ~bad
    files = source_file if isinstance(source_file, str) else source_file[keep]
    return raw.loc[keep].reset_index(drop=True), files, rows[keep]


def _read_parquet_piece(piece: Piece, columns: list[str]) -> pa.Table:
    """A Parquet piece's columns as an Arrow table; a text ``event_type`` column comes as a dictionary (a pandas
    categorical: a handful of distinct types is coded once by the reader instead of hashed row by row)."""
    handle = pq.ParquetFile(piece.file.path, read_dictionary=[schema.EVENT])  # ignored unless the column is text
    if piece.row_groups is None:
        return handle.read(columns=columns)
    return handle.read_row_groups(list(piece.row_groups), columns=columns)


def _read_bundle(bundle: Bundle, columns: list[str]) -> tuple[pd.DataFrame, Any, Any]:
    """(raw rows, source file of each row, 0-based data row of each row in its file). One piece: its file name and
    offset as scalars; packed Parquet pieces: read as Arrow tables, concatenated, converted to pandas once."""
    if len(bundle.pieces) == 1:
        piece = bundle.pieces[0]
        return _read_guarded(piece, columns), piece.file.path, piece.row_offset or 0
    tables = [_read_guarded(piece, columns, arrow=True) for piece in bundle.pieces]
    raw = pa.concat_tables(tables).to_pandas()
    lengths = [table.num_rows for table in tables]
    files = pd.Categorical.from_codes(np.repeat(np.arange(len(tables)), lengths),
                                      categories=[piece.file.path for piece in bundle.pieces])
    rows = np.concatenate([np.arange(piece.row_offset or 0, (piece.row_offset or 0) + n, dtype=np.int64)
                           for piece, n in zip(bundle.pieces, lengths, strict=True)])
    return raw, files, rows


def _read_guarded(piece: Piece, columns: list[str], arrow: bool = False) -> Any:
    try:
        if arrow:
            return _read_parquet_piece(piece, columns)
        return _read_piece(piece, columns)
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise HomerankError(f"{piece.file.path}: could not be read ({_safe_reason(exc)})") from None


def _ingest_bundle(bundle: Bundle, columns: list[str], event_types: list[str], id_dtype: IdDtype, unit: str,
                   pseudonym_key: bytes | None, quarantine_dir: str, latest: pd.Timestamp | None = None,
                   session_dtype: SessionDtype = "string", search_event: str | None = None,
                   searches_dir: str | None = None) -> pd.DataFrame:
    """Read and validate one bundle on a worker; write its rejected rows and its counts beside the quarantine (and
    its clean search rows into ``searches_dir`` when ``search_event`` is given); return the clean events.
    ``id_dtype`` and ``latest`` were decided once on the client: every bundle gets the same."""
    raw, source_file, source_row = _read_bundle(bundle, columns + ([schema.QUERY] if search_event else []))
    rows_in = len(raw)
    malformed: list[pd.DataFrame] = []
    raw, source_file, source_row = _pop_malformed(raw, source_file, source_row, malformed)
    searches = refused = None
    if search_event is not None:
        raw, source_file, source_row, search_raw, search_file, search_row = split_searches(
            raw, source_file, source_row, search_event)
        if search_raw is not None:
            searches, refused = validate_searches(search_raw, search_file, id_dtype, unit, search_row, latest,
                                                  session_dtype)
    clean, rejected = validate_events(raw, source_file, event_types, id_dtype, unit, source_row, latest,
                                      session_dtype)
    if refused is not None and len(refused):
        rejected = pd.concat([rejected, refused], ignore_index=True)
    if malformed:
        rejected = pd.concat([*malformed, rejected], ignore_index=True)
    if pseudonym_key is not None:
        clean[schema.USER] = pseudonymise(clean[schema.USER], pseudonym_key)
        rejected[schema.USER] = pseudonymise(rejected[schema.USER], pseudonym_key)
        if searches is not None:
            searches[schema.USER] = pseudonymise(searches[schema.USER], pseudonym_key)
    folder = Path(quarantine_dir)
    name = f"part-{bundle.number:05d}"
    if len(rejected):
        _write_atomically(folder / f"{name}.parquet", lambda tmp: rejected.to_parquet(tmp, index=False))
    if searches is not None and len(searches) and searches_dir is not None:
        _write_atomically(Path(searches_dir) / f"{name}.parquet", lambda tmp: searches.to_parquet(tmp, index=False))
    counts = {"in": rows_in, "clean": len(clean), "newest": str(clean[schema.TS].max()) if len(clean) else None,
              "reasons": {str(k): int(v) for k, v in rejected[schema.REASON].value_counts().items()}}
    if search_event is not None:
        counts["searches"] = 0 if searches is None else len(searches)
        counts["search_quarantined"] = 0 if refused is None else len(refused)
    _write_atomically(folder / COUNTS / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(counts)))
    return clean


COUNTS = "_counts"


def _write_atomically(path: Path, write) -> None:  # noqa: ANN001 - write(tmp_path)
    """Write through a temp sibling and rename: a retried task (a worker died) rewrites the same file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def ingest_events(path: str | Sequence[str], config: IngestConfig, backend: Backend, id_dtype: str = "auto",
                  quarantine_dir: str | os.PathLike[str] | None = None,
                  searches_dir: str | os.PathLike[str] | None = None, intermediates: Mode = "memory",
                  intermediates_dir: str | os.PathLike[str] | None = None) -> Ingested:
    """Read, validate and de-duplicate a behaviour log. See the module docstring for the guarantees.

    ``id_dtype`` ("auto", "int64", "string") overrides ``config.id_dtype`` unless it is "auto".

    ``quarantine_dir`` receives the rejected rows (one Parquet file per piece that had any, written by the
    workers); by default a temporary folder. The caller turns it into a dataset (`homerank.jobs.rundir`).
    ``searches_dir`` likewise receives the clean search rows when the log has them (`Ingested.searches`).
    A temporary folder made here lives as long as the returned `Ingested` (removed when it is garbage-collected,
    or at once when ingestion raises): pass a folder to keep the rows.

    ``intermediates`` ("memory", "disk", "auto": `homerank.engine.intermediates`) says where the clean events and
    the events by user are kept between passes; on disk, under ``intermediates_dir`` (by default a temporary
    folder, owned like the others). `Ingested.intermediates` carries the choice to the ETL's later steps.
    """
    owned: list[Path] = []
    try:
        result = _ingest_events(path, config, backend, id_dtype, quarantine_dir, searches_dir, owned, intermediates,
                                intermediates_dir)
    except BaseException:
        for folder in owned:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    for folder in owned:
        weakref.finalize(result, shutil.rmtree, str(folder), True)
    return result


def _ingest_events(path: str | Sequence[str], config: IngestConfig, backend: Backend, id_dtype: str,
                   quarantine_dir: str | os.PathLike[str] | None, searches_dir: str | os.PathLike[str] | None,
                   owned: list[Path], intermediates: Mode = "memory",
                   intermediates_dir: str | os.PathLike[str] | None = None) -> Ingested:
    """`ingest_events`; the temporary folders it makes are appended to ``owned``."""
    files = discover_files(path, config.format)
    column_sets = []
    schemas: dict[str, pa.Schema] = {}
    for file in files:
        columns = read_columns(file)
        check_required_columns(file, columns)
        if file.format == "parquet":  # CSV columns are text: their cells are checked row by row
            schemas[file.path] = pq.read_schema(file.path)
            check_column_types(file, schemas[file.path])
        column_sets.append(columns)
    optional = [c for c in schema.OPTIONAL_EVENT_COLUMNS if all(c in cols for cols in column_sets)]
    search_event = None
    if config.search_event is not None and all(schema.QUERY in cols for cols in column_sets):
        search_event = config.search_event.strip().lower()
        for file in files:
            if file.format == "parquet":
                check_column_types(file, schemas[file.path], (schema.QUERY,))
    elif config.search_event is not None and any(schema.QUERY in cols for cols in column_sets):
        log.warning("ingest: only some input files have a %r column: searches are read only when every file has "
                    "one, so no row is a search (rows of type %r are unknown_event_type)", schema.QUERY,
                    config.search_event)
    columns = list(schema.REQUIRED_EVENT_COLUMNS) + optional
    resolved_ids = decide_id_dtype(files, id_dtype if id_dtype != "auto" else config.id_dtype, schemas)
    session_dtype = decide_session_dtype(files, schemas) if schema.SESSION in optional else "string"
    latest = None  # the newest plausible event time, fixed once here so that every piece uses the same
    if config.future_tolerance_hours is not None:
        now = pd.Timestamp.now(tz="UTC").tz_localize(None)
        latest = now + pd.Timedelta(hours=config.future_tolerance_hours)
    key = pseudonym_key() if config.pseudonymise_user_ids else None
    event_types = [e.strip().lower() for e in config.event_types]
    if quarantine_dir is None:
        owned.append(Path(tempfile.mkdtemp(prefix="quarantine-")))
    folder = Path(quarantine_dir) if quarantine_dir is not None else owned[-1]
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("part-*.parquet"), *(folder / COUNTS).glob("*.json")]:
        stale.unlink()
    search_folder = None
    if search_event is not None:
        if searches_dir is None:
            owned.append(Path(tempfile.mkdtemp(prefix="searches-")))
        search_folder = Path(searches_dir) if searches_dir is not None else owned[-1]
        search_folder.mkdir(parents=True, exist_ok=True)
        for stale in search_folder.glob("part-*.parquet"):
            stale.unlink()
    pieces = _csv_row_offsets(plan_pieces(files, config.partition_rows, config.csv_block_bytes))
    workers = worker_count()
    bundles = pack_pieces(pieces, config.partition_rows, schemas, columns + ([schema.QUERY] if search_event else []),
                          bundle_count(pieces, config.partition_rows, workers))
    log.info("ingest: %d file(s) in %d piece(s), %d partition(s), id dtype %s, columns %s, events after %s are "
             "future_timestamp%s", len(files), len(pieces), len(bundles), resolved_ids, columns, latest,
             f", rows of type {search_event!r} are searches (column {schema.QUERY!r})" if search_event else "")
    meta = _empty_clean(columns, resolved_ids, event_types, session_dtype)
    if key is not None:
        meta[schema.USER] = meta[schema.USER].astype("string")
    searching = {} if search_event is None else {"search_event": search_event, "searches_dir": str(search_folder)}
    clean = dd.from_map(_ingest_bundle, bundles, columns=columns, event_types=event_types, id_dtype=resolved_ids,
                        unit=config.timestamp_unit, pseudonym_key=key, quarantine_dir=str(folder), latest=latest,
                        session_dtype=session_dtype, **searching, meta=meta,
                        enforce_metadata=False, label="ingest-piece")
    if intermediates != "memory" and intermediates_dir is None:
        owned.append(Path(tempfile.mkdtemp(prefix="intermediates-")))
        intermediates_dir = owned[-1]
    kept_frames = choose_intermediates(intermediates, _estimated_rows(pieces), meta,
                                       Path(intermediates_dir) if intermediates_dir is not None else None)
    clean, clean_rows = kept_frames.keep(backend.on_backend(clean), "clean")  # every piece has run: counts on disk
    counts = [json.loads(p.read_text()) for p in sorted((folder / COUNTS).glob("*.json"))]
    # one shuffle: range-partitioned by user, so exact duplicates (same user) meet in one partition, where one
    # sort puts them side by side (and the events in the (user, item, time) order of every later step)
    deduped, kept = kept_frames.keep(events_by_user(clean, clean_rows, config.partition_rows, workers=workers),
                                     "events")
    del clean  # the workers drop the unsorted copy once the sorted one is built
    kept_frames.drop("clean")
    if len(counts) != len(bundles):  # pragma: no cover - a task that returned wrote its counts
        raise AssertionError(f"ingest: counts of {len(counts)} of {len(bundles)} partitions")
    reasons: dict[str, int] = {}
    for record in counts:
        for reason, n in record["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    rows_in = sum(c["in"] for c in counts)
    if clean_rows != sum(c["clean"] for c in counts):  # pragma: no cover - invariant
        raise AssertionError("ingest: clean rows differ from the pieces' counts")
    newest = max((pd.Timestamp(c["newest"]) for c in counts if c.get("newest")), default=None)
    rows = {"in": rows_in, "kept": kept, "quarantined": sum(reasons.values()), "duplicates": clean_rows - kept}
    if search_event is not None:
        rows["searches"] = sum(c["searches"] for c in counts)
    if rows["in"] != sum(rows.values()) - rows["in"]:  # pragma: no cover - invariant
        raise AssertionError(f"row conservation violated: {rows}")
    log.info("ingest: rows %s, quarantine reasons %s", rows, reasons)
    return Ingested(events=deduped, quarantine=folder, rows=rows, files=[f.path for f in files],
                    id_dtype=resolved_ids, reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                    partitions=len(bundles), newest=newest, searches=search_folder,
                    search_quarantined=sum(c.get("search_quarantined", 0) for c in counts),
                    intermediates=kept_frames)


CSV_BYTES_PER_ROW = 40  # a CSV piece's rows, estimated from its bytes (for `choose_intermediates`)


def _estimated_rows(pieces: list[Piece]) -> int:
    """The input's rows: Parquet pieces' from the metadata, CSV pieces' from their bytes."""
    total = 0
    for piece in pieces:
        if piece.rows is not None:
            total += piece.rows
        else:
            start, end = piece.byte_range or (0, os.path.getsize(piece.file.path))
            total += (end - start) // CSV_BYTES_PER_ROW
    return total


def read_catalogue(path: str) -> pd.DataFrame:
    """Read the optional item catalogue (Parquet or CSV). Must contain ``item_id``, in the canonical form of
    `canonical_ids`: int64 when every file stores its ids as numbers (Parquet integers or integral floats), else
    strings (a CSV file's ids are read as text, so "007" stays "007"). The homepage converts them to the run's id
    form (`homerank.homepage.catalogue.build_catalogue`). A null, empty or non-integral float id, or an ``item_id``
    column of another type, is a user error naming the file and the column."""
    files = discover_files(path)
    frames, forms = [], []
    for file in files:
        columns = read_columns(file)
        check_required_columns(file, columns, schema.CATALOGUE_REQUIRED)
        if file.format == "parquet":
            check_column_types(file, pq.read_schema(file.path), schema.CATALOGUE_REQUIRED)
            frame = pd.read_parquet(file.path)
        else:
            refuse_malformed_csv(file.path, "catalogue")
            frame = pd.read_csv(file.path, dtype={schema.ITEM: str}, sep=csv_delimiter(file.path))
        raw = _plain_values(frame[schema.ITEM])
        form: IdDtype = "int64" if pd.api.types.is_numeric_dtype(raw.dtype) else "string"
        ids, bad = canonical_ids(raw, form)
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise HomerankError(f"{file.path}: column {schema.ITEM!r}: {int(bad.sum())} bad id(s), the first "
                                f"{str(raw.iloc[first])[:40]!r} at data row {first}: catalogue ids must be integers, "
                                "integral floats or non-empty text")
        frames.append(frame.assign(**{schema.ITEM: ids}))
        forms.append(form)
    if "string" in forms:  # one form for the whole catalogue: numbers as their digits
        frames = [f.assign(**{schema.ITEM: canonical_ids(f[schema.ITEM], "string")[0]}) for f in frames]
    return _one_row_per_item(pd.concat(frames, ignore_index=True), path)


def _one_row_per_item(catalogue: pd.DataFrame, path: str) -> pd.DataFrame:
    """The catalogue with one row per item id, the first one, saying in the log what was dropped: identical copies
    of a row, and rows that repeat an id with other values (a conflict: the first row's category, price, ... win;
    the warning names one such item and how many there are)."""
    repeated = catalogue.duplicated(schema.ITEM, keep="first").to_numpy()
    if not repeated.any():
        return catalogue
    copies = catalogue.astype("string").duplicated(keep="first").to_numpy()  # every column equal (NaN == NaN)
    conflicting = catalogue.loc[repeated & ~copies, schema.ITEM].unique()
    if conflicting.size:
        log.warning("catalogue %s: %d item(s) have rows with different values (e.g. item %s); each keeps its first "
                    "row", path, conflicting.size, conflicting[0])
    log.warning("catalogue %s: %d of %d rows repeat an item id and are dropped (%d identical copies)", path,
                int(repeated.sum()), len(catalogue), int((repeated & copies).sum()))
    return catalogue.loc[~repeated].reset_index(drop=True)
