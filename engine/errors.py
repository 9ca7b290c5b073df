"""The one exception type for mistakes a user can make (bad file, missing column, bad config)."""

from __future__ import annotations


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
    """A data-quality gate stopped the job before training (exit status 3)."""

    exit_code = 3
