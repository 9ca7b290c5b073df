"""The input log's files: a file, a folder (searched recursively) or a glob, each file Parquet or CSV by its name.

A light module (no data frame library): the job's command line asks it, before the heavy imports, whether the
ETL will want worker processes (`homerank.jobs.cluster.choose_processes`), so that their forkserver starts early."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from homerank.engine.errors import HomerankError

FileFormat = Literal["parquet", "csv"]
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")


def csv_delimiter(path: str) -> str:
    """The cell delimiter of a CSV file by its name: a tab for ``.tsv`` (``.tsv.gz``), else a comma."""
    return "\t" if path.lower().endswith((".tsv", ".tsv.gz")) else ","


@dataclass(frozen=True)
class InputFile:
    path: str
    format: FileFormat


def _format_of(path: str, forced: str) -> FileFormat | None:
    if forced in ("parquet", "csv"):
        return forced  # type: ignore[return-value]
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def discover_files(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   forced_format: str = "auto") -> list[InputFile]:
    """Expand a file, a directory (searched recursively) or a glob into the list of input files; a list of them
    into their files in the order given (a file found twice is read once)."""
    if not isinstance(path, str | os.PathLike):
        files: dict[str, InputFile] = {}
        for each in path:
            for found in discover_files(each, forced_format):
                files.setdefault(found.path, found)
        if not files:
            raise HomerankError("--input: no input given")
        return list(files.values())
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
