"""Runs the stages in order (each alone or all of them), timing each and refreshing the report."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import socket
import sys
import time
from importlib import metadata
from typing import Any

from homerank.engine.backend import Backend
from homerank.engine.errors import HomerankError
from homerank.gnn.train import EvaluationHook
from homerank.jobs.cluster import dask_client
from homerank.jobs.config import JobConfig, dump_config
from homerank.jobs.report import write_report
from homerank.jobs.rundir import RunDir, read_json, write_json, write_text
from homerank.jobs.stage_etl import run_etl
from homerank.jobs.stage_evaluate import run_evaluate
from homerank.jobs.stage_graph import run_graph
from homerank.jobs.stage_homepage import run_homepage
from homerank.jobs.stage_rank import run_rank
from homerank.jobs.stage_train import run_train

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


def run_stage(stage: str, run: RunDir, config: JobConfig, backend: Backend, input_path: str | None = None,
              show_progress: bool = True, resume: bool = False, on_evaluation: EvaluationHook | None = None) -> Any:
    """Run one stage, time it and refresh the report. ``on_evaluation`` reaches the training loop
    (`homerank.gnn.train.train_lightgcn`): the accuracy bench records its accuracy-vs-time curve with it."""
    started = time.perf_counter()
    log.info("stage %s: start (%s)", stage, run.root)
    try:
        result = _dispatch(stage, run, config, backend, input_path, show_progress, resume, on_evaluation)
    except HomerankError:
        write_report(run)  # the report shows what stopped the job (quarantine counts, failed gates)
        raise
    seconds = time.perf_counter() - started
    _record_timing(run, stage, seconds)
    write_report(run)
    log.info("stage %s: done in %.1fs", stage, seconds)
    return result


def _dispatch(stage: str, run: RunDir, config: JobConfig, backend: Backend, input_path: str | None,
              show_progress: bool, resume: bool, on_evaluation: EvaluationHook | None) -> Any:
    if stage == "etl":
        assert input_path is not None
        with dask_client(config.cluster, backend):
            result = run_etl(input_path, run, config, backend)
    elif stage == "graph":
        result = run_graph(run, config, backend)
    elif stage == "train":
        result = run_train(run, config, backend, show_progress=show_progress, resume=resume,
                           on_evaluation=on_evaluation)
    elif stage == "evaluate":
        result = run_evaluate(run, config, backend)
    elif stage == "rank":
        result = run_rank(run, config, backend)
    elif stage == "homepage":
        result = run_homepage(run, config, backend) if config.homepage.enabled else {}
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(stage)
    return result


STAGE_OUTPUTS = {"etl": ("etl_stats", "edges"), "graph": ("graph",), "train": ("scorer", "train_summary"),
                 "evaluate": ("metrics",), "rank": ("rankings", "rank_stats"), "homepage": ("homepage_stats",)}


def input_fingerprint(input_path: str, config: JobConfig) -> list[list[Any]]:
    """(path, size, mtime) of every input file: a changed daily drop changes the ETL fingerprint."""
    from pathlib import Path

    from homerank.engine.ingest import discover_files

    if config.ingest.format == "lightgcn":
        files = sorted(str(p) for p in Path(input_path).glob("*.txt"))
    else:
        files = [f.path for f in discover_files(input_path, config.ingest.format)]
    if config.ingest.catalogue:
        files.append(config.ingest.catalogue)
    return [[f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns] for f in files if Path(f).exists()]


STAGE_SETTINGS = {"etl": ("seed", "ingest", "interactions", "split", "gates", "rank"), "graph": ("graph",),
                  "train": ("seed", "device", "train", "evaluate"), "evaluate": ("evaluate",), "rank": ("rank",),
                  "homepage": ("homepage",)}


def stage_fingerprints(input_path: str, config: JobConfig) -> dict[str, str]:
    """Each stage's fingerprint hashes the config sections it reads (STAGE_SETTINGS) and chains the stage
    before it, so a changed input or setting reruns that stage and everything downstream, nothing upstream."""
    settings = config.model_dump(mode="json")
    fingerprints, previous = {}, json.dumps(input_fingerprint(input_path, config))
    for stage in STAGES:
        own = json.dumps({key: settings[key] for key in STAGE_SETTINGS[stage]}, sort_keys=True)
        previous = hashlib.sha256(f"{stage}|{previous}|{own}".encode()).hexdigest()
        fingerprints[stage] = previous
    return fingerprints


def _stage_complete(run: RunDir, stage: str, fingerprint: str, recorded: dict[str, Any]) -> bool:
    entry = recorded.get(stage, {})
    outputs = all(getattr(run, name).exists() for name in STAGE_OUTPUTS[stage])
    return entry.get("fingerprint") == fingerprint and entry.get("status") == "done" and outputs


def run_pipeline(input_path: str, run: RunDir, config: JobConfig, backend: Backend,
                 show_progress: bool = True, resume: bool = False,
                 on_evaluation: EvaluationHook | None = None) -> dict[str, Any]:
    """All stages in order. With ``resume``, stages whose recorded fingerprint matches are skipped and an
    interrupted training continues from its checkpoints (`gnn.train`)."""
    run.ensure()
    write_resolved_config(run, config)
    recorded = read_json(run.stages) if resume and run.stages.exists() else {}
    if not resume and run.timings.exists():
        run.timings.unlink()
    fingerprints = stage_fingerprints(input_path, config)
    upstream_rerun = False
    for stage in STAGES:
        fingerprint = fingerprints[stage]
        if resume and not upstream_rerun and _stage_complete(run, stage, fingerprint, recorded):
            log.info("stage %s: up to date (fingerprint %s), skipped", stage, fingerprint[:12])
            continue
        continue_training = (resume and not upstream_rerun and stage == "train"
                             and recorded.get("train", {}).get("fingerprint") == fingerprint)
        recorded[stage] = {"fingerprint": fingerprint, "status": "started"}
        write_json(run.stages, recorded)
        run_stage(stage, run, config, backend, input_path if stage == "etl" else None, show_progress,
                  resume=continue_training, on_evaluation=on_evaluation)
        recorded[stage] = {"fingerprint": fingerprint, "status": "done"}
        write_json(run.stages, recorded)
        upstream_rerun = True
    return read_json(run.metrics)
