"""Persist a dask DataFrame so that later graphs read its partitions under their own keys.

``frame.persist()`` (dask-expr) returns a collection over ``FromGraph``, whose tasks are *aliases*: key
``(name', i)`` -> the persisted ``(name, i)``. dask keeps an alias whose target is a persisted key (it cannot fold
it away, `dask._task_spec.resolve_aliases`), so on a distributed cluster every compute that reads the frame runs
one alias task per partition and each worker then holds every partition under two keys:

    managed memory   counted twice (dask's ``sizeof`` per key), so spilling starts at half the real use
    spilling         the two keys are pickled and written separately (twice the spill I/O and disk), and while
                     one key's copy is on disk the other still holds the object (memory dask believes freed)
    unspilling       each key is read back as its own copy (twice the memory)

Seen on the ETL's k-core edges at 3·10^8 events (2 workers x 2 GiB): the worker that passed 95% of its limit in
the encode/split phase held 303 ``_kcore_step`` partitions and 302 ``kcore_step`` aliases of them. (Removing the
aliases was not enough for that size: the same phase still failed without them, README "Out of core"; at 10^8 the
spill peak fell from 7.1 to 5.2 GiB.)
(The same key-by-key accounting of shared objects is what dask-cuda's JIT spilling works around for device
memory: rapidsai/dask-cuda#451.)

`persist` returns the same persisted partitions as a collection whose keys *are* the persisted keys: the graphs
built on it reference them directly, with no alias tasks. Works for pandas and cuDF partitions alike (only the
graph changes), with the distributed scheduler (futures) or a local one (in-memory results).
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

import dask.dataframe as dd
from dask.dataframe.dask_expr import new_collection
from dask.dataframe.dask_expr.io.io import FromGraph


class PersistedPartitions(FromGraph):
    """`FromGraph` named after its persisted keys, whose layer is those keys' results (futures or data) alone."""

    @functools.cached_property
    def _name(self) -> str:
        return self.operand("keys")[0][0]

    def _layer(self) -> dict:
        return dict(self.operand("layer"))


def _same_partition(partition: Any) -> Any:
    return partition


def persist(frame: dd.DataFrame | dd.Series) -> Any:
    """``frame.persist()`` without alias tasks (module docstring); the same partitions, divisions and meta.

    dask-expr keeps one live expression per name, so the persisted keys must carry a name that no lazy expression
    has: the frame is first tagged with a no-op ``map_partitions`` whose token is unique to this call (fused into
    the frame's last step, so it adds no task), and the persisted keys take the tagged expression's name. Where the
    result is not the expected shape (another dask version), the plain ``persist()`` result is returned."""
    tagged = frame.map_partitions(_same_partition, token=f"persisted-{uuid.uuid4().hex}", meta=frame._meta,
                                  enforce_metadata=False)
    done = tagged.persist()
    expr = done.expr
    keys = list(expr.operand("keys")) if isinstance(expr, FromGraph) else []
    names = {key[0] for key in keys if isinstance(key, tuple)}
    in_order = [key[1] for key in keys if isinstance(key, tuple)] == list(range(done.npartitions))
    if len(names) != 1 or len(keys) != done.npartitions or not in_order:  # pragma: no cover - dask changed shape
        return done
    persisted = PersistedPartitions(*expr.operands)
    if not isinstance(persisted, PersistedPartitions):  # pragma: no cover - a live expression has that name
        return done
    return new_collection(persisted)
