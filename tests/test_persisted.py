"""`homerank.engine.persisted.persist`: the persisted partitions under their own keys, no alias tasks."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask._task_spec import Alias

from homerank.engine.persisted import persist


def _frame() -> dd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": rng.integers(0, 50, 400), "value": rng.random(400)})
    return dd.from_pandas(frame, npartitions=4).map_partitions(lambda part: part.assign(double=part["value"] * 2))


def _aliases(collection) -> list:
    graph = dict(collection.optimize().__dask_graph__())
    return [key for key, task in graph.items() if isinstance(task, Alias)]


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        yield client


def test_persisted_partitions_are_read_under_their_own_keys(client):
    frame = _frame()
    done = persist(frame)
    assert done.npartitions == frame.npartitions and done.divisions == frame.divisions
    distributed = pytest.importorskip("distributed")
    distributed.wait(distributed.futures_of(done))
    held = {key for keys in client.has_what().values() for key in keys}
    assert set(done.__dask_keys__()) <= held  # the collection's keys are the persisted ones, on the worker
    later = done.map_partitions(lambda part: part.assign(triple=part["value"] * 3))
    assert _aliases(later) == []
    pd.testing.assert_frame_equal(later.compute(), frame.compute().assign(triple=lambda f: f["value"] * 3))
    grouped = done.groupby("user_id")["double"].sum().compute().sort_index()
    pd.testing.assert_series_equal(grouped, frame.compute().groupby("user_id")["double"].sum().sort_index())


def test_persist_without_a_distributed_client_keeps_the_results():
    frame = _frame()
    with dask.config.set(scheduler="sync"):
        done = persist(frame)
        pd.testing.assert_frame_equal(done.compute(), frame.compute())
        assert _aliases(done.map_partitions(lambda part: part)) == []
