"""Runs the stages in order (each alone or all of them), timing each and refreshing the report.

``run --resume`` skips a stage only when both hold:

- **Its fingerprint is unchanged.** A stage's fingerprint hashes the config sections it reads (`STAGE_SETTINGS`),
  every file named in those sections, and the fingerprint of the stage before it (the ETL's also covers the input
  log, `input_fingerprint`). *Every string value of those sections that names an existing regular file* is
  fingerprinted (`named_files`): ``ingest.catalogue`` for etl, ``homepage.merchandising`` for homepage, and any
  path option added later, without editing this module. A file of up to `CONTENT_HASH_MAX_BYTES` enters with its
  sha256 (a merchandising file edited in place keeps its size, and its mtime when restored with ``cp -p`` or
  ``rsync -t``, or edited twice within the file system's clock tick; a re-saved identical file reruns nothing);
  a larger one with its size and mtime_ns, as make and rsync do, so a multi-GB catalogue is not read on every
  resume. A named file that does not exist is left out: the stage itself reports it, naming the option. A
  setting that names a folder is not walked: list its files as `input_fingerprint` does for the log.
  Files the stage reads inside the run directory (``RUN/etl/items.parquet``, the catalogue the homepage reads)
  were written by an earlier stage, whose fingerprint this one chains.
- **Every output it wrote is intact** (`stage_outputs`): an output that is a folder is a Parquet dataset
  (``quarantine/``, ``rankings/``, ``homepage/``, ...) and must pass `verify_dataset` (manifest and ``_SUCCESS``
  present, every part present with its sha256, no unlisted part); a single file exists and is complete as far as
  a cheap look tells (non-empty; a Parquet file starts and ends with ``PAR1``; a torch file is a zip archive with
  its end record; JSON parses; JSON Lines end with a line end). Torch files are not loaded here: the stage that
  reads them loads them safely (``weights_only=True``) and says what to rerun if they are damaged.

A stage that fails either check reruns, and so does every stage after it; one log line says why
(``stage homepage: rerun, homepage/part-00000.parquet: changed since it was written (checksum mismatch)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homerank.engine.backend import Backend
from homerank.engine.errors import HomerankError
from homerank.jobs.config import JobConfig, dump_config
from homerank.jobs.report import write_report
from homerank.jobs.rundir import RunDir, read_json, verify_dataset, write_json, write_text

if TYPE_CHECKING:
    from homerank.gnn.train import EvaluationHook

log = logging.getLogger(__name__)

STAGES = ("etl", "graph", "train", "evaluate", "rank", "homepage")


def environment() -> dict[str, str]:
    versions = {}
    for package in ("homerank", "torch", "torch-geometric", "dask", "distributed", "pandas", "pyarrow", "numpy",
                    "scipy", "cudf-cu12", "cudf-cu13", "cugraph-cu12", "cugraph-cu13"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {"python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
            "processor": platform.machine(), **versions}


def write_resolved_config(run: RunDir, config: JobConfig) -> None:
    env = environment()
    header = "# homerank resolved config — " + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n"
    write_text(run.config, header + dump_config(config))


def _record_timing(run: RunDir, stage: str, seconds: float) -> None:
    timings = read_json(run.timings) if run.timings.exists() else {}
    timings[stage] = round(seconds, 3)
    write_json(run.timings, timings)


def run_stage(stage: str, run: RunDir, config: JobConfig, backend: Backend, input_path: str | list[str] | None = None,
              show_progress: bool = True, resume: bool = False, on_evaluation: EvaluationHook | None = None) -> Any:
    """Run one stage, time it and refresh the report. ``on_evaluation`` reaches the training loop
    (`homerank.gnn.train.train_lightgcn`): the accuracy bench records its accuracy-vs-time curve with it."""
    started = time.perf_counter()
    log.info("stage %s: start (%s)", stage, run.root)
    try:
        with _arrow_memory_pool(stage):
            result = _dispatch(stage, run, config, backend, input_path, show_progress, resume, on_evaluation)
    except HomerankError:
        write_report(run)  # the report shows what stopped the job (quarantine counts, failed gates)
        raise
    seconds = time.perf_counter() - started
    _record_timing(run, stage, seconds)
    write_report(run)
    log.info("stage %s: done in %.1fs", stage, seconds)
    return result


@contextlib.contextmanager
def _arrow_memory_pool(stage: str) -> Iterator[None]:
    """Arrow's buffers while a stage runs (the previous pool restored after it). The stages after the ETL: the system
    allocator (also the process default, `homerank` sets ``ARROW_DEFAULT_MEMORY_POOL``), whose freed pages
    `release_free_memory` returns; mimalloc kept them (reading the 1.2 GiB of `etl/interactions/` at 3 * 10^7 events:
    2.35 GiB held after the read against 1.57 GiB). The ETL: mimalloc, when this Arrow build has it: its dask
    workers run as threads of this process when ``cluster.processes`` is false, and there glibc's per-thread arenas
    peaked higher (10^7 events, 2 threads: 2.14 GB against 1.78 GB). Worker processes keep the system default."""
    import pyarrow as pa

    previous = pa.default_memory_pool()
    pool = pa.system_memory_pool()
    if stage == "etl":
        try:
            pool = pa.mimalloc_memory_pool()
        except NotImplementedError:  # an Arrow build without mimalloc
            pass
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _dispatch(stage: str, run: RunDir, config: JobConfig, backend: Backend, input_path: str | list[str] | None,
              show_progress: bool, resume: bool, on_evaluation: EvaluationHook | None) -> Any:
    # each stage's module is imported when it runs: a `homerank STAGE` process loads only what its stage needs
    # (the homepage stage needs neither dask.distributed nor torch_geometric), seconds of start-up per stage
    if stage == "etl":
        from homerank.jobs.cluster import dask_client
        from homerank.jobs.stage_etl import run_etl

        assert input_path is not None
        with dask_client(config.cluster, backend, input_path, config.ingest.format):
            result = run_etl(input_path, run, config, backend)
    elif stage == "graph":
        from homerank.jobs.stage_graph import run_graph

        result = run_graph(run, config, backend)
    elif stage == "train":
        from homerank.jobs.stage_train import run_train

        result = run_train(run, config, backend, show_progress=show_progress, resume=resume,
                           on_evaluation=on_evaluation)
    elif stage == "evaluate":
        from homerank.jobs.stage_evaluate import run_evaluate

        result = run_evaluate(run, config, backend)
    elif stage == "rank":
        from homerank.jobs.stage_rank import run_rank

        result = run_rank(run, config, backend)
    elif stage == "homepage":
        from homerank.jobs.stage_homepage import run_homepage

        result = run_homepage(run, config, backend) if config.homepage.enabled else {}
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(stage)
    return result


STAGE_OUTPUTS = {
    "etl": ("etl_stats", "edges", "interactions", "user_index", "item_index", "quarantine"),
    "graph": ("graph", "graph_stats"),
    "train": ("scorer", "train_summary"),
    "evaluate": ("metrics",),
    "rank": ("rankings", "rank_stats", "user_embeddings", "item_embeddings", "item_faiss"),
    "homepage": ("homepage_stats", "homepage", "homepage_jsonl", "impressions"),
}  # RunDir attributes each stage always writes; `stage_outputs` adds or drops those that depend on the config


def stage_outputs(stage: str, config: JobConfig) -> tuple[str, ...]:
    """The RunDir attributes ``stage`` writes with this config (checked before `run --resume` skips it)."""
    outputs = STAGE_OUTPUTS[stage]
    lightgcn = config.ingest.format == "lightgcn"
    if stage == "etl" and config.ingest.catalogue and not lightgcn:
        outputs += ("catalogue",)
    if stage == "etl" and config.profiles.enabled and not lightgcn:
        outputs += ("profiles",)
    if stage == "etl" and config.profiles.last_session and not lightgcn:
        outputs += ("last_session",)  # the homepage's continue_shopping row (etl/searches/ depends on the log)
    if stage == "train" and config.train.content.enabled and config.train.content.write_cold_items:
        outputs += ("cold_items",)  # the homepage's vectors of the catalogue items outside the graph
    if stage == "homepage" and not config.homepage.enabled:
        outputs = ()
    elif stage == "homepage" and lightgcn:  # no timestamps or event types: only the stats saying so
        outputs = ("homepage_stats",)
    return outputs


def input_fingerprint(input_path: str | list[str], config: JobConfig) -> list[list[Any]]:
    """(path, size, mtime) of every input file: a changed daily drop changes the ETL fingerprint."""
    from pathlib import Path

    from homerank.engine.ingest import discover_files

    if config.ingest.format == "lightgcn" and isinstance(input_path, str):
        files = sorted(str(p) for p in Path(input_path).glob("*.txt"))
    else:
        files = [f.path for f in discover_files(input_path, config.ingest.format)]
    if config.ingest.catalogue:
        files.append(config.ingest.catalogue)
    return [[f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns] for f in files if Path(f).exists()]


STAGE_SETTINGS = {"etl": ("seed", "ingest", "interactions", "split", "gates", "rank", "profiles", "warm_start"),
                  "graph": ("graph",), "train": ("seed", "device", "train", "evaluate", "warm_start"),
                  "evaluate": ("evaluate",), "rank": ("rank",), "homepage": ("homepage",)}
UNSET_SETTINGS_LEFT_OUT = ("warm_start",)  # a cold run's fingerprints stay those of the runs made before it existed


CONTENT_HASH_MAX_BYTES = 16 * 2**20  # config-named files up to this size are fingerprinted by content


def named_files(settings: Any) -> list[str]:
    """Every string in ``settings`` (config sections dumped to JSON: mappings, lists, scalars; mappings walked in
    key order) that names an existing regular file, each once, in the order found."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(value[key])
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value and value not in found:
            try:
                is_file = Path(value).is_file()
            except (OSError, ValueError):  # too long for a path, or a NUL in it: not a file name
                is_file = False
            if is_file:
                found.append(value)

    walk(settings)
    return found


def file_fingerprint(path: str) -> list[Any] | None:
    """``[path, size, "sha256:..."]`` for a file up to `CONTENT_HASH_MAX_BYTES`, else ``[path, size, mtime_ns]``;
    None when it has gone since `named_files` saw it."""
    try:
        stat = Path(path).stat()
        if stat.st_size > CONTENT_HASH_MAX_BYTES:
            return [path, stat.st_size, stat.st_mtime_ns]
        with open(path, "rb") as handle:
            return [path, stat.st_size, "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()]
    except OSError:
        return None


def stage_input_files(config: JobConfig) -> dict[str, list[list[Any]]]:
    """Per stage, `file_fingerprint` of every file named in the config sections it reads (`STAGE_SETTINGS`), and of
    the previous run's files a warm-started stage reads (`homerank.jobs.warm_start.fingerprint_files`)."""
    from homerank.jobs.warm_start import fingerprint_files

    settings = config.model_dump(mode="json")
    previous = fingerprint_files(config)
    files = {}
    for stage in STAGES:
        named = named_files({key: settings[key] for key in STAGE_SETTINGS[stage]}) + previous.get(stage, [])
        files[stage] = [entry for entry in map(file_fingerprint, named) if entry is not None]
    return files


def _stage_settings(settings: dict[str, Any], stage: str) -> dict[str, Any]:
    """The config sections ``stage`` reads, less those of `UNSET_SETTINGS_LEFT_OUT` that are at their defaults."""
    defaults = JobConfig().model_dump(mode="json")
    return {key: settings[key] for key in STAGE_SETTINGS[stage]
            if key not in UNSET_SETTINGS_LEFT_OUT or settings[key] != defaults[key]}


def stage_fingerprints(input_path: str | list[str], config: JobConfig,
                       input_files: dict[str, list[list[Any]]] | None = None) -> dict[str, str]:
    """Each stage's fingerprint hashes the config sections it reads (STAGE_SETTINGS), the files named in them
    (``input_files``, default `stage_input_files`) and chains the stage before it, so a changed input, setting or
    configured file reruns that stage and everything downstream, nothing upstream."""
    settings = config.model_dump(mode="json")
    input_files = stage_input_files(config) if input_files is None else input_files
    fingerprints, previous = {}, json.dumps(input_fingerprint(input_path, config))
    for stage in STAGES:
        own = json.dumps(_stage_settings(settings, stage), sort_keys=True)
        if input_files[stage]:  # only then: a stage without named files keeps the fingerprint it had before
            own += "|" + json.dumps(input_files[stage])
        previous = hashlib.sha256(f"{stage}|{previous}|{own}".encode()).hexdigest()
        fingerprints[stage] = previous
    return fingerprints


def _file_problem(path: Path) -> str | None:
    """Why a single-file artifact is not complete, from a cheap look (no full parse of large files), or None."""
    if path.is_symlink() or not path.is_file():
        return "missing"
    size = path.stat().st_size
    if path.suffix == ".jsonl":  # an empty page set is an empty file; a cut one ends mid-line
        return None if size == 0 or _tail(path, 1) == b"\n" else "cut short (no line end at the end)"
    if size == 0:
        return "empty"
    if path.suffix == ".parquet" and (size < 8 or _head(path, 4) != b"PAR1" or _tail(path, 4) != b"PAR1"):
        return "not a complete Parquet file (no PAR1 at both ends)"
    if path.suffix == ".pt" and not zipfile.is_zipfile(path):
        return "not a complete torch file (no zip end record)"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (UnicodeDecodeError, ValueError):
            return "not valid JSON"
    return None


def _head(path: Path, count: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def _tail(path: Path, count: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-count, 2)
        return handle.read(count)


def _output_problem(run: RunDir, stage: str, config: JobConfig) -> str | None:
    """The first output of ``stage`` that is missing or damaged, as ``"NAME: why"`` (NAME relative to the run)."""
    for name in stage_outputs(stage, config):
        path = getattr(run, name)
        if path.is_dir() and not path.is_symlink():  # a Parquet dataset: only complete with its manifest
            try:
                verify_dataset(path)
            except HomerankError as exc:
                return exc.message.replace(f"{run.root}{os.sep}", "")
            continue
        problem = _file_problem(path)
        if problem is not None:
            return f"{path.relative_to(run.root)}: {problem}"
    return None


def _rerun_reason(run: RunDir, stage: str, fingerprint: str, recorded: dict[str, Any], config: JobConfig,
                  input_files: list[list[Any]]) -> str | None:
    """Why ``stage`` must run again although the stages before it were skipped, or None when it is up to date:
    its fingerprint changed (naming the configured file that changed, if one did), it did not finish, or an
    output is missing or damaged."""
    entry = recorded.get(stage)
    if not isinstance(entry, dict):
        return "no earlier run of it recorded in logs/stages.json"
    if entry.get("status") != "done":
        return "it did not finish last time"
    if entry.get("fingerprint") != fingerprint:
        before = {file[0]: file for file in entry.get("inputs") or [] if isinstance(file, list) and file}
        now = {file[0]: file for file in input_files}
        changes = [f"{path} changed" for path in now if path in before and before[path] != now[path]]
        changes += [f"{path} newly configured" for path in now if path not in before]
        changes += [f"{path} no longer configured or gone" for path in before if path not in now]
        if changes and "inputs" in entry:  # a record from before inputs were recorded cannot tell
            return changes[0]
        return f"its settings ({', '.join(STAGE_SETTINGS[stage])}) or the files they name changed"
    return _output_problem(run, stage, config)


def _read_stages(run: RunDir) -> dict[str, Any]:
    try:
        recorded = read_json(run.stages) if run.stages.exists() else {}
    except (OSError, UnicodeDecodeError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        log.warning("%s: unreadable; every stage runs again", run.stages)
        return {}
    return recorded


def run_pipeline(input_path: str | list[str], run: RunDir, config: JobConfig, backend: Backend,
                 show_progress: bool = True, resume: bool = False,
                 on_evaluation: EvaluationHook | None = None) -> dict[str, Any]:
    """All stages in order. With ``resume``, a stage is skipped when its recorded fingerprint matches and its
    outputs verify (see the module docstring), and an interrupted training continues from its checkpoints
    (`gnn.train`); a stage that runs again reruns every stage after it, and the log says why."""
    run.ensure()
    write_resolved_config(run, config)
    recorded = _read_stages(run) if resume else {}
    if not resume and run.timings.exists():
        run.timings.unlink()
    input_files = stage_input_files(config)
    fingerprints = stage_fingerprints(input_path, config, input_files)
    rerun_from: str | None = None  # the first stage that ran: every later one runs too
    for stage in STAGES:
        fingerprint = fingerprints[stage]
        if resume:
            if rerun_from is None:
                reason = _rerun_reason(run, stage, fingerprint, recorded, config, input_files[stage])
            else:
                reason = f"{rerun_from} before it reran"
            if reason is None:
                log.info("stage %s: up to date (fingerprint %s), skipped", stage, fingerprint[:12])
                continue
            log.info("stage %s: rerun, %s", stage, reason)
        previous = recorded.get(stage)
        continue_training = (resume and rerun_from is None and stage == "train" and isinstance(previous, dict)
                             and previous.get("fingerprint") == fingerprint)
        recorded[stage] = {"fingerprint": fingerprint, "status": "started", "inputs": input_files[stage]}
        write_json(run.stages, recorded)
        run_stage(stage, run, config, backend, input_path if stage == "etl" else None, show_progress,
                  resume=continue_training, on_evaluation=on_evaluation)
        recorded[stage] = {"fingerprint": fingerprint, "status": "done", "inputs": input_files[stage]}
        write_json(run.stages, recorded)
        rerun_from = rerun_from or stage
    return read_json(run.metrics)
