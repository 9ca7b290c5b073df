"""The embedded default: a deterministic synthetic e-commerce behaviour log, written in parallel by dask.

The generative story is in `synthetic_model`, the split into partitions in `synthetic_plan`. Here the
partitions run as independent tasks on a dask cluster: task p draws partition p's events from
``default_rng([seed, 1, p])`` and the users' own blocks, and writes ``part-NNNNN.parquet`` (p with five digits)
into a staging folder itself, so no event passes through the client and a worker holds one partition at a time
(at most ``partition_events`` rows). The catalogue tables (O(items)) are computed once and scattered to the
workers. Because the plan and every draw depend only on the spec, the same spec gives the same files whatever the
number of workers or threads.

Output: ``out_dir/events/`` (one Parquet file per partition; columns user_id Int64, item_id int64, event_type
string, timestamp datetime64[ns], session_id int64, value float64; with ``search_share`` > 0 also query string, the
search rows having event_type ``search`` and no item_id) and ``out_dir/items.parquet`` (the catalogue, with the spec
in its schema metadata: `read_spec`).
Both are staged next to their final path and renamed into place only when every partition is written; a failed or
killed run leaves the previous output (or none), never a half-written one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from homerank.engine.errors import HomerankError, disk_full_error
from homerank.engine.files import swap_into_place
from homerank.engine.synthetic_model import (
    ADJECTIVES,
    ITEM_ID_OFFSET,
    START,
    USER_ID_OFFSET,
    SyntheticSpec,
    World,
    category_names,
    make_catalogue,
    partition_events,
)
from homerank.engine.synthetic_plan import Partition, plan_partitions

__all__ = ["ADJECTIVES", "ITEM_ID_OFFSET", "START", "USER_ID_OFFSET", "SyntheticSpec", "World", "category_names",
           "generate", "make_catalogue", "part_name", "plan_partitions", "read_spec", "write_catalogue",
           "write_partition"]

log = logging.getLogger(__name__)

EVENTS_STAGING = ".events.tmp"
ITEMS_STAGING = ".items.parquet.tmp"


SPEC_METADATA = b"homerank.synthetic"  # items.parquet schema metadata: the SyntheticSpec that made the log (JSON)


def write_catalogue(path: Path, catalogue: Any, spec: SyntheticSpec) -> None:
    """The catalogue as Parquet with ``spec`` (JSON) under `SPEC_METADATA` in its schema metadata, so whoever holds
    the catalogue can rebuild the latent model behind the log (`read_spec`; `homerank simulate-feedback` does)."""
    import dataclasses
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(catalogue, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), SPEC_METADATA: json.dumps(dataclasses.asdict(spec)).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def read_spec(catalogue: str | os.PathLike[str]) -> SyntheticSpec | None:
    """The `SyntheticSpec` recorded in a generated catalogue (`write_catalogue`), None for any other catalogue."""
    import json

    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(catalogue).metadata or {}
    except (OSError, ValueError):
        return None
    if SPEC_METADATA not in metadata:
        return None
    return SyntheticSpec(**json.loads(metadata[SPEC_METADATA]))


def part_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def write_partition(staging: str, spec: SyntheticSpec, world: World, part: Partition) -> int:
    """Task: generate partition ``part`` and write it as ``staging/part-NNNNN.parquet`` (through a temporary
    name, so a file with the final name is complete); returns its row count."""
    events = partition_events(spec, world, part.number, part.first_user, part.last_user, part.first_session)
    final = Path(staging) / part_name(part.number)
    tmp = final.with_name(f".{final.name}.tmp")
    events.to_parquet(tmp, index=False)
    os.replace(tmp, final)
    return len(events)


@contextmanager
def _client(scheduler: str | None, workers: int | None, processes: bool) -> Iterator[Any]:
    """A client of the dask scheduler at ``scheduler``, else of a local cluster of ``workers`` workers (default: the
    cores) of one thread each, worker processes or threads of this process. Like `Backend.local_cluster`, everything
    listens on localhost only; generation is NumPy/pandas work, so it needs no backend (and no torch import)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise HomerankError(f"--scheduler: cannot reach dask scheduler {scheduler} ({exc})") from None
        with client:
            yield client
        return
    network = {"host": "127.0.0.1"} if processes else {}
    with LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=processes,
                      dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0", **network) as cluster:
        with Client(cluster) as client:
            yield client


def _run_partitions(client: Any, staging: Path, spec: SyntheticSpec, world: World, plan: list[Partition],
                    show_progress: bool) -> int:
    """Run `write_partition` for every partition on ``client``; the total row count. The first failure cancels
    the rest and raises a `HomerankError` naming the partition."""
    from distributed import as_completed

    shared_world = client.scatter(world, broadcast=True, hash=False)
    futures = client.map(write_partition, [str(staging)] * len(plan), [spec] * len(plan),
                         [shared_world] * len(plan), plan, pure=False)
    number_of = {future.key: part.number for future, part in zip(futures, plan, strict=True)}
    rows = 0
    progress = _progress(len(plan), spec.events) if show_progress else None
    try:
        for future in as_completed(futures):
            if future.status != "finished":  # "error" (the task raised, or its worker died) or "cancelled"
                exc = future.exception() if future.status == "error" else None
                raise _partition_error(staging, number_of[future.key], exc) from exc
            rows += future.result()
            if progress is not None:
                progress[0].advance(progress[1])
    finally:
        client.cancel(futures)
        if progress is not None:
            progress[0].stop()
    return rows


def _partition_error(staging: Path, number: int, exc: BaseException | None) -> HomerankError:
    full = disk_full_error(staging.parent, exc) if exc is not None else None
    if full is not None:
        return full
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "cancelled"
    return HomerankError(f"generate: partition {number} ({part_name(number)}) failed ({reason}); nothing was "
                         f"written to {staging.parent / 'events'}")


def _progress(total: int, events: int) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("partitions"),
                        TimeElapsedColumn(), transient=True)
    task = progress.add_task(f"~{events} events", total=total)
    progress.start()
    return progress, task


def generate(out_dir: str | os.PathLike[str], spec: SyntheticSpec | None = None, *, client: Any = None,
             scheduler: str | None = None, workers: int | None = None, processes: bool = False,
             show_progress: bool = False) -> dict[str, object]:
    """Write ``out_dir/events/`` (one Parquet file per partition) and ``out_dir/items.parquet``; return a summary
    (events, users, items, partitions, seconds, events_per_second, path, seed).

    The partition tasks run on ``client`` (a ``distributed.Client``), else on the dask scheduler at ``scheduler``
    (``tcp://host:8786``), else on a local cluster of ``workers`` single-threaded workers (default: the cores),
    worker processes when ``processes`` else threads of this process. Workers of another machine must see
    ``out_dir``. The files are the same whichever runs them.
    """
    spec = spec or SyntheticSpec()
    if spec.partition_events < 1 or spec.users_per_partition < 1:
        raise HomerankError("generate: partition_events and users_per_partition must be positive")
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    catalogue, world = make_catalogue(spec)
    plan = plan_partitions(spec)
    staging, items_staging = out / EVENTS_STAGING, out / ITEMS_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    log.info("generate: %d partitions of at most %d users and %d events", len(plan), spec.users_per_partition,
             spec.partition_events)
    try:
        if client is None:
            with _client(scheduler, workers, processes) as own:
                rows = _run_partitions(own, staging, spec, world, plan, show_progress)
        else:
            rows = _run_partitions(client, staging, spec, world, plan, show_progress)
        write_catalogue(items_staging, catalogue, spec)
        swap_into_place(staging, out / "events")
        swap_into_place(items_staging, out / "items.parquet")
    except OSError as exc:
        error = disk_full_error(out, exc)
        if error is None:
            raise
        raise error from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        items_staging.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    summary = {"events": rows, "users": spec.users, "items": spec.items, "partitions": len(plan),
               "seconds": round(seconds, 3), "events_per_second": round(rows / seconds), "path": str(out),
               "seed": spec.seed}
    log.info("synthetic log: %s", summary)
    return summary
