"""Ingest: read behaviour logs (Parquet or CSV; a file, a directory or a glob) through dask, validate every
row, quarantine the bad ones with a reason, and drop exact duplicates.

The input is cut into pieces, one dask partition each (`plan_pieces`): runs of Parquet row groups of about
``ingest.partition_rows`` rows (from the files' metadata, so a single large file is many partitions), and CSV
files as a whole or, above ``ingest.csv_block_bytes``, in byte blocks cut at line ends. Each piece is read,
validated and quarantined on a worker: its rejected rows are written there as one Parquet file of the
quarantine dataset, and only its row counts (a few numbers) come back to the client.

Conservation law (checked and reported): ``rows_in == kept + quarantined + duplicates``.

Schema problems that make a whole file unusable (missing required column, unreadable or empty file) are
user errors: `HomerankError` naming the file and the column. Row problems (null id, unknown event type,
unparsable timestamp, non-numeric value) send the row to quarantine with a ``reason``, ``source_file`` and
``source_row`` (0-based data row inside that file; for a CSV file split into blocks, the data line: a quoted
field holding a line break is not supported in such a file — keep those below the block size).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
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

    events: clean, de-duplicated events (dask, persisted on the workers) with columns user_id, item_id,
        event_type, timestamp (datetime64[ns], UTC-naive) and the optional session_id, value.
    quarantine: the folder holding the rejected rows, one ``part-NNNNN.parquet`` per piece that had any (strings
        plus reason, source_file, source_row), written by the workers.
    rows: {"in", "kept", "quarantined", "duplicates"}.
    """

    events: dd.DataFrame
    quarantine: Path
    rows: dict[str, int]
    files: list[str] = field(default_factory=list)
    id_dtype: IdDtype = "string"
    reasons: dict[str, int] = field(default_factory=dict)
    partitions: int = 0

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
                    pieces.append(Piece(len(pieces), file, offset, tuple(group)))
                    offset, group, rows = offset + rows, [], 0
            if metadata.num_row_groups == 0:
                pieces.append(Piece(len(pieces), file, 0, ()))
            continue
        size = os.path.getsize(file.path)
        if size <= csv_block_bytes:
            pieces.append(Piece(len(pieces), file, 0))
            continue
        for number, (start, end) in enumerate(_csv_blocks(file.path, size, csv_block_bytes)):
            pieces.append(Piece(len(pieces), file, 0 if number == 0 else None, byte_range=(start, end)))
    return pieces


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


def _read_piece(piece: Piece, columns: list[str]) -> pd.DataFrame:
    """The raw rows of one piece (CSV as text: typing happens in validation, so a bad cell quarantines a row)."""
    path = piece.file.path
    if piece.file.format == "parquet":
        if piece.row_groups is not None:
            return pq.ParquetFile(path).read_row_groups(list(piece.row_groups), columns=columns).to_pandas()
        return pd.read_parquet(path, columns=columns)
    if piece.byte_range is None:
        return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=True)
    start, end = piece.byte_range
    with open(path, "rb") as handle:
        header = handle.readline()
        handle.seek(start)
        body = handle.read(end - start)
    if start > 0:
        body = header + body
    return pd.read_csv(io.BytesIO(body), usecols=columns, dtype=str, keep_default_na=True)


def _ingest_piece(piece: Piece, columns: list[str], event_types: list[str], id_dtype: IdDtype, unit: str,
                  pseudonym_key: bytes | None, quarantine_dir: str) -> pd.DataFrame:
    """Read and validate one piece on a worker; write its rejected rows and its counts beside the quarantine;
    return the clean rows."""
    try:
        raw = _read_piece(piece, columns)
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HomerankError(f"{piece.file.path}: could not be read ({first_line[:200]})") from None
    clean, rejected = validate_events(raw, piece.file.path, event_types, id_dtype, unit, piece.row_offset or 0)
    if pseudonym_key is not None:
        clean[schema.USER] = pseudonymise(clean[schema.USER], pseudonym_key)
        rejected[schema.USER] = pseudonymise(rejected[schema.USER], pseudonym_key)
    folder = Path(quarantine_dir)
    name = f"part-{piece.number:05d}"
    if len(rejected):
        _write_atomically(folder / f"{name}.parquet", lambda tmp: rejected.to_parquet(tmp, index=False))
    counts = {"in": len(raw), "clean": len(clean),
              "reasons": {str(k): int(v) for k, v in rejected[schema.REASON].value_counts().items()}}
    _write_atomically(folder / COUNTS / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(counts)))
    return clean


COUNTS = "_counts"


def _write_atomically(path: Path, write) -> None:  # noqa: ANN001 - write(tmp_path)
    """Write through a temp sibling and rename: a retried task (a worker died) rewrites the same file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _split_out(npartitions: int) -> int:
    """Output partitions of a group-by/dedupe: one for small inputs (no shuffle), more as input grows."""
    return 1 if npartitions <= 16 else npartitions // 8


def ingest_events(path: str, config: IngestConfig, backend: Backend, id_dtype: str = "auto",
                  quarantine_dir: str | os.PathLike[str] | None = None) -> Ingested:
    """Read, validate and de-duplicate a behaviour log. See the module docstring for the guarantees.

    ``quarantine_dir`` receives the rejected rows (one Parquet file per piece that had any, written by the
    workers); by default a temporary folder. The caller turns it into a dataset (`homerank.jobs.rundir`).
    """
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
    folder = Path(quarantine_dir) if quarantine_dir is not None else Path(tempfile.mkdtemp(prefix="quarantine-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("part-*.parquet"), *(folder / COUNTS).glob("*.json")]:
        stale.unlink()
    pieces = _csv_row_offsets(plan_pieces(files, config.partition_rows, config.csv_block_bytes))
    log.info("ingest: %d file(s) in %d piece(s), id dtype %s, columns %s", len(files), len(pieces), resolved_ids,
             columns)
    meta = _empty_clean(columns, resolved_ids)
    if key is not None:
        meta[schema.USER] = meta[schema.USER].astype("string")
    clean = dd.from_map(_ingest_piece, pieces, columns=columns, event_types=event_types, id_dtype=resolved_ids,
                        unit=config.timestamp_unit, pseudonym_key=key, quarantine_dir=str(folder), meta=meta,
                        enforce_metadata=False, label="ingest-piece")
    clean = backend.on_backend(clean)
    deduped = clean.drop_duplicates(split_out=_split_out(clean.npartitions)).persist()
    kept = int(deduped.shape[0].compute())  # every piece has run: its counts are on disk
    counts = [json.loads(p.read_text()) for p in sorted((folder / COUNTS).glob("*.json"))]
    if len(counts) != len(pieces):  # pragma: no cover - a task that returned wrote its counts
        raise AssertionError(f"ingest: counts of {len(counts)} of {len(pieces)} pieces")
    reasons: dict[str, int] = {}
    for record in counts:
        for reason, n in record["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    rows_in, clean_rows = sum(c["in"] for c in counts), sum(c["clean"] for c in counts)
    rows = {"in": rows_in, "kept": kept, "quarantined": sum(reasons.values()), "duplicates": clean_rows - kept}
    if rows["in"] != rows["kept"] + rows["quarantined"] + rows["duplicates"]:  # pragma: no cover - invariant
        raise AssertionError(f"row conservation violated: {rows}")
    log.info("ingest: rows %s, quarantine reasons %s", rows, reasons)
    return Ingested(events=deduped, quarantine=folder, rows=rows, files=[f.path for f in files],
                    id_dtype=resolved_ids, reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                    partitions=len(pieces))


def read_catalogue(path: str) -> pd.DataFrame:
    """Read the optional item catalogue (Parquet or CSV). Must contain ``item_id``."""
    files = discover_files(path)
    frames = []
    for file in files:
        columns = read_columns(file)
        check_required_columns(file, columns, schema.CATALOGUE_REQUIRED)
        frames.append(pd.read_parquet(file.path) if file.format == "parquet" else pd.read_csv(file.path))
    return pd.concat(frames, ignore_index=True)


