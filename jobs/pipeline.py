"""Runs the stages in order (each alone or all of them), timing each and refreshing the report."""

from __future__ import annotations

import logging
import platform
import socket
import sys
import time
from importlib import metadata
from typing import Any

from engine.backend import Backend
from engine.errors import HomerankError
from jobs.cluster import dask_client
from jobs.config import JobConfig, dump_config
from jobs.report import write_report
from jobs.rundir import RunDir, read_json, write_json, write_text
from jobs.stage_etl import run_etl
from jobs.stage_evaluate import run_evaluate
from jobs.stage_graph import run_graph
from jobs.stage_rank import run_rank
from jobs.stage_train import run_train

log = logging.getLogger(__name__)

STAGES = ("etl", "graph", "train", "evaluate", "rank")


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
              show_progress: bool = True, resume: bool = False) -> Any:
    started = time.perf_counter()
    log.info("stage %s: start (%s)", stage, run.root)
    try:
        result = _dispatch(stage, run, config, backend, input_path, show_progress, resume)
    except HomerankError:
        write_report(run)  # the report shows what stopped the job (quarantine counts, failed gates)
        raise
    seconds = time.perf_counter() - started
    _record_timing(run, stage, seconds)
    write_report(run)
    log.info("stage %s: done in %.1fs", stage, seconds)
    return result


def _dispatch(stage: str, run: RunDir, config: JobConfig, backend: Backend, input_path: str | None,
              show_progress: bool, resume: bool) -> Any:
    if stage == "etl":
        assert input_path is not None
        with dask_client(config.cluster, backend):
            result = run_etl(input_path, run, config, backend)
    elif stage == "graph":
        result = run_graph(run, config, backend)
    elif stage == "train":
        result = run_train(run, config, backend, show_progress=show_progress, resume=resume)
    elif stage == "evaluate":
        result = run_evaluate(run, config, backend)
    elif stage == "rank":
        result = run_rank(run, config, backend)
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(stage)
    return result


def run_pipeline(input_path: str, run: RunDir, config: JobConfig, backend: Backend,
                 show_progress: bool = True) -> dict[str, Any]:
    run.ensure()
    write_resolved_config(run, config)
    if run.timings.exists():
        run.timings.unlink()
    for stage in STAGES:
        run_stage(stage, run, config, backend, input_path if stage == "etl" else None, show_progress)
    return read_json(run.metrics)
