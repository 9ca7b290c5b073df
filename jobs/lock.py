"""One job at a time per run directory: every command that writes into a run directory holds an exclusive lock on
``RUN/.homerank.lock`` for the whole job, so two jobs never crash into or silently replace each other's outputs.

The lock is a ``flock`` on the open file, so the operating system releases it when the holder exits, however it
dies (even SIGKILL): a killed job never leaves a stale lock behind. The file holds the holder's pid, host and start
time only for the message a second job prints; it is never what decides whether the directory is free. Readers
(``homerank preview``, `homerank.Run`) do not take the lock.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator

from homerank.engine.errors import HomerankError
from homerank.jobs.rundir import RunDir

log = logging.getLogger(__name__)


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file (best effort: it may be between jobs)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(info['pid'])} on host {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another homerank job"


@contextlib.contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Hold the run directory's lock inside the block; raise `HomerankError` (exit 2) naming the holder when
    another job (this process included) holds it already."""
    run.ensure()
    try:
        fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: spawned workers do not inherit it
    except OSError as exc:
        raise HomerankError(f"{run.lock}: cannot create the run directory's lock file ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HomerankError(
                f"{run.root} is in use by {_holder(fd)}; wait for that job to finish or give another run "
                f"directory (--out). The lock ({run.lock.name}) goes away by itself when that process exits"
            ) from None
        except OSError as exc:  # a file system without flock (some network mounts): run, but say so
            log.warning("%s: cannot lock the run directory (%s); nothing stops a second job writing here",
                        run.root, exc.strerror)
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays (unlinking a lock file races with the next job); its holder goes
    finally:
        os.close(fd)  # closing the descriptor releases the flock
