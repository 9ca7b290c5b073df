"""Warnings and logging hygiene shared by the command line and the Python API: library warnings that say nothing
to a homerank user are silenced, and every run logs to ``RUN/logs/homerank.log``."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

# beta notices of the sparse CSR kernels homerank relies on, and PyG's use of a deprecated torch API
LIBRARY_WARNINGS = ("Sparse CSR tensor support is in beta state", "Sparse invariant checks are implicitly",
                    "`torch.jit.script` is deprecated")
NOISY_LOGGERS = ("distributed", "dask", "tornado", "asyncio", "faiss", "faiss.loader")
# p2p shuffles log their life cycle ("initialized by task", "deactivated due to stimulus") as warnings
QUIET_LOGGERS = ("distributed.shuffle",)


def quiet_noisy_loggers() -> None:
    """Library loggers that narrate their internals: warnings only (`QUIET_LOGGERS`: errors only)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_library_warnings() -> None:
    """Ignore `LIBRARY_WARNINGS` for the rest of the process (the command line)."""
    for message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Ignore `LIBRARY_WARNINGS` inside the block only (the Python API leaves the caller's filters alone)."""
    with warnings.catch_warnings():
        quiet_library_warnings()
        yield


@contextlib.contextmanager
def run_log(log_file: Path) -> Iterator[None]:
    """Append homerank's log records to ``log_file`` inside the block, without touching the caller's handlers
    (beyond making sure INFO records of ``homerank`` reach this one)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("homerank")
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()
