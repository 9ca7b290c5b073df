"""The one exception type for mistakes a user can make (bad file, missing column, bad config)."""

from __future__ import annotations

import errno
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


DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def disk_full_error(path: str | Path, exc: BaseException) -> HomerankError | None:
    """The one-line error for a write to ``path`` that failed because the disk or the quota is full (ENOSPC,
    EDQUOT); None for any other failure, which the caller re-raises as it was."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_FULL:
        return None
    return HomerankError(f"{path}: could not be written ({os.strerror(exc.errno)}); free some space or give "
                         "another --out, then rerun (nothing half-written was left behind)")
