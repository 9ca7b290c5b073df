"""Where the ETL keeps a frame that later passes read again: in the workers' memory, or as Parquet on disk.

The ETL reads its clean events, its events by user and its all-time edges several times (counts, k-core rounds,
encode and split, last sessions). ``memory`` persists such a frame on the workers (`homerank.engine.persisted`):
the cheapest way when it fits, but a log larger than the workers' memory then lives in dask's spill files, a
worker that passes its memory limit is restarted, and everything persisted on it is recomputed from the input
(the ingest shuffle included). ``disk`` writes the frame once, partition by partition, as
``FOLDER/NAME/part-NNNNN.parquet`` (zstd level 1, `homerank.engine.partitioned.write_partitions`) and returns a
frame that reads those files back, one file per partition: nothing is held on the workers between passes, every
later pass streams from the files (reading only the columns it needs), and a restarted worker re-reads files
instead of re-running the ingest.

``auto`` chooses ``disk`` when the events' estimated in-memory size exceeds ``DISK_SHARE`` of the workers' total
memory limit (the ETL holds about three frames of that size at once in memory: events, all-time edges, k-core
edges), else ``memory``.

Works for pandas and cuDF partitions alike: the files are read back with the partitions' own library
(``cudf.read_parquet`` for cuDF), and every column is given the dtype of the frame's meta again (a categorical's
categories, a string dtype), so the read-back frame has the written frame's meta.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import dask
import dask.dataframe as dd
import pandas as pd

from homerank.engine.partitioned import scheduler_workers, write_partitions
from homerank.engine.persisted import persist
from homerank.engine.sorted_events import frame_library

log = logging.getLogger(__name__)

Mode = Literal["auto", "memory", "disk"]
DISK_SHARE = 0.2  # auto: on disk when the events' estimated bytes pass this share of the workers' memory limit


def read_part(path: str, columns: list[str] | None = None, meta: Any = None) -> Any:
    """One ``part-NNNNN.parquet`` of a kept frame as a partition like ``meta`` (its ``columns`` only: dask passes
    the columns a later pass selects, so a pass over two columns reads two)."""
    lib = frame_library(meta)
    columns = list(columns) if columns is not None else [str(c) for c in meta.columns]
    frame = lib.read_parquet(path, columns=columns)
    wanted = meta[columns].dtypes
    wrong = {c: kind for c, kind in wanted.items() if frame[c].dtype != kind}
    return frame.astype(wrong) if wrong else frame


def read_parts(folder: Path, meta: Any, divisions: tuple | None = None) -> dd.DataFrame:
    """The ``part-*.parquet`` files of ``folder``, in name order, as a frame with one partition per file."""
    files = sorted(str(path) for path in folder.glob("part-*.parquet"))
    return dd.from_map(functools.partial(read_part, meta=meta), files, meta=meta, divisions=divisions,
                       enforce_metadata=False, label=f"read-{folder.name}")


class Intermediates:
    """Keeps frames for later passes (`keep`): persisted on the workers, or written under ``folder`` when
    ``on_disk``; `drop` frees a kept frame's files once no later pass reads it."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    def keep(self, frame: dd.DataFrame, name: str, count: bool = True) -> tuple[dd.DataFrame, int | None]:
        """``frame`` kept for later passes, and its row count, in one pass over it. ``count=False``: in memory, the
        frame is persisted without waiting for it (None for the count: the caller counts it in a later compute, one
        round trip to the workers fewer); on disk the count comes with the write anyway."""
        if self.folder is None:
            kept = persist(frame)
            return kept, int(kept.shape[0].compute()) if count else None
        folder = self.folder / name
        shutil.rmtree(folder, ignore_errors=True)
        divisions = frame.divisions if frame.known_divisions else None
        lengths = frame.map_partitions(len, meta=(None, "int64"), enforce_metadata=False)
        _, lengths = dask.compute(write_partitions(frame, folder, compute=False), lengths)
        if hasattr(lengths, "to_pandas"):  # a cuDF series (the GPU backend) cannot be iterated on the host
            lengths = lengths.to_pandas()
        lengths = [int(n) for n in lengths]  # one per partition actually computed (a sort's count is known only then)
        written = len(list(folder.glob("part-*.parquet")))
        if written != len(lengths):  # pragma: no cover - dask writes every partition, empty ones included
            raise AssertionError(f"{folder}: {written} files for {len(lengths)} partitions")
        rows = int(sum(lengths))
        log.info("intermediates: %s written to %s (%d rows, %d partitions)", name, folder, rows, written)
        if divisions is not None and len(divisions) != written + 1:
            divisions = None
        return read_parts(folder, frame._meta, divisions), rows

    def drop(self, name: str) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder / name, ignore_errors=True)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def workers_memory_limit() -> int | None:
    """The sum of the active distributed client's workers' memory limits in bytes; None without a client, or when
    a worker has no limit."""
    workers = scheduler_workers()
    limits = [int(worker.get("memory_limit") or 0) for worker in (workers or {}).values()]
    if not limits or min(limits) <= 0:
        return None
    return sum(limits)


def row_bytes(meta: pd.DataFrame) -> int:
    """Rough in-memory bytes of one row of ``meta``'s columns: 8 per number or time, 4 per categorical code, 48 per
    string (pointer, object or arrow offsets, and the text)."""
    total = 0
    for kind in meta.dtypes:
        if isinstance(kind, pd.CategoricalDtype):
            total += 4
        elif pd.api.types.is_string_dtype(kind) or pd.api.types.is_object_dtype(kind):
            total += 48
        else:
            total += 8
    return total


def choose(mode: Mode, rows: int, meta: pd.DataFrame, folder: Path | None) -> Intermediates:
    """`Intermediates` for ``mode``; ``auto`` decides from ``rows`` (the input's row count, or an estimate) times
    `row_bytes` against ``DISK_SHARE`` of `workers_memory_limit` (memory without a known limit). ``folder``: where
    frames kept on disk go (needed unless ``mode`` is memory)."""
    if mode != "memory" and folder is None:
        raise ValueError(f"intermediates {mode!r}: a folder for the files is needed")
    estimate = rows * row_bytes(meta)
    limit = workers_memory_limit()
    on_disk = mode == "disk" or (mode == "auto" and limit is not None and estimate > DISK_SHARE * limit)
    log.info("intermediates: %s (setting %s; events ~%.2f GiB in memory, workers' limit %s)",
             "Parquet files in " + str(folder) if on_disk else "persisted on the workers", mode, estimate / 2**30,
             f"{limit / 2**30:.1f} GiB" if limit else "unknown")
    return Intermediates(folder if on_disk else None)
