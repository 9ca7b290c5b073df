"""homerank: behaviour logs -> user-item graph -> LightGCN -> personalised homepages.

The public Python API (README, "From Python")::

    import homerank

    run = homerank.run("logs/", out="runs/today", **{"train.epochs": 10})
    run.metrics["test"]["recall@20"]
    run.recommend([1000017, 42], k=10)
    run = homerank.Run.open("runs/demo")

The packages follow the data journey: `homerank.engine` (logs -> clean frames -> graph), `homerank.gnn`
(graph -> embeddings -> scores), `homerank.homepage` (scores -> pages), `homerank.jobs` (stages, run
directory, command line).
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

# Arrow buffers from the system allocator (unless the caller chose): Arrow's default mimalloc pool keeps the pages of
# freed buffers, and Arrow's I/O context takes the default pool once, when Arrow first reads a file, so this must be
# set before pyarrow is imported. Reading the train and valid edges at 3 * 10^7 events (0.34 GiB of columns) left
# the process 0.78 GiB above its start with mimalloc, 0.38 GiB with the system allocator (`release_free_memory`).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from homerank.engine.errors import GateError, HomerankError, TrainingDivergedError

_API = ("Embeddings", "Run", "run")


def __getattr__(name: str) -> Any:
    """`Embeddings`, `Run` and `run` load `homerank.api` (and torch) on first use: a dask worker that unpickles an
    engine function imports the package without paying for the model side."""
    if name in _API:
        from homerank import api

        return getattr(api, name)
    raise AttributeError(f"module 'homerank' has no attribute {name!r}")

try:
    __version__ = metadata.version("homerank")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = ["Embeddings", "GateError", "HomerankError", "Run", "TrainingDivergedError", "__version__", "run"]
