"""The one exception type for mistakes a user can make (bad file, missing column, bad config)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path


class HomerankError(Exception):
    """A user-facing error: the CLI prints its one-line message and exits with status 2.

    The message must name what is wrong (file, column, row or option) and, where it helps, what to do.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        message = message.replace("\r", "\\r").replace("\n", "\\n")  # always one line on stderr
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keep the message when dask ships the error between processes
        return (type(self), (self.message,))


class GateError(HomerankError):
    """A data-quality check stopped the job (exit status 3): a gate after ETL, a graph without edges, or rankings
    that would be incomplete; nothing from the failed stage is published."""

    exit_code = 3


class TrainingDivergedError(HomerankError):
    """Training produced a non-finite loss or embedding (exit status 3); no scorer is written, so no ranking or
    homepage is built from it. The message names the epoch and the value."""

    exit_code = 3


def user_error_names() -> frozenset[str]:
    """The class names of `HomerankError` and of every subclass defined so far (as ``repr`` of an instance starts)."""
    names, pending = set(), [HomerankError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return frozenset(names)


class UserErrorTaskFilter(logging.Filter):
    """Drops dask's "Compute Failed" record of a task that raised a `HomerankError` (a bad file, row or option met
    inside a worker): the record carries the task and the worker's traceback, while the job itself reports the
    same error as its one line and exit status. Any other task failure keeps its record. dask's worker logs
    ``"Compute Failed\nKey: ...\nException: %r\nTraceback: %r"`` with the exception's repr as its 4th argument
    (distributed/worker.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if not str(record.msg).startswith("Compute Failed") or len(args) < 4:
            return True
        return str(args[3]).split("(", 1)[0] not in user_error_names()


def quiet_user_error_tasks() -> None:
    """Install `UserErrorTaskFilter` on dask's worker logger in this process (once): the job's process, whose
    in-process workers log there, and each local worker process (`homerank.engine.worker_processes.dask_setup`)."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(existing, UserErrorTaskFilter) for existing in logger.filters):
        logger.addFilter(UserErrorTaskFilter())


DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def disk_full_error(path: str | Path, exc: BaseException) -> HomerankError | None:
    """The one-line error for a write to ``path`` that failed because the disk or the quota is full (ENOSPC,
    EDQUOT); None for any other failure, which the caller re-raises as it was."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_FULL:
        return None
    return HomerankError(f"{path}: could not be written ({os.strerror(exc.errno)}); free some space or give "
                         "another --out, then rerun (nothing half-written was left behind)")
