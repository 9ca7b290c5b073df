"""`homerank generate` at scale: independent partition tasks on a dask cluster, the same files whatever the number
of workers, partitions bounded by ``partition_events``, and the output folder appears only complete."""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from homerank.engine.errors import HomerankError
from homerank.engine.synthetic import SyntheticSpec, generate
from homerank.engine.synthetic_model import USER_BLOCK, user_sessions
from homerank.engine.synthetic_plan import Z_MARGIN, dispersion, plan_partitions, target_events

SMALL = SyntheticSpec(users=400, items=200, events=20_000, users_per_partition=200, seed=5)  # 2 partitions


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def sorted_events(folder: Path) -> pd.DataFrame:
    events = pd.read_parquet(folder / "events")
    return events.sort_values(list(events.columns), kind="stable", na_position="first").reset_index(drop=True)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_worker")
    generate(out, SMALL, workers=1)
    return out


def test_same_files_with_one_or_two_workers(one_worker, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = generate(tmp_path / "two", SMALL, client=client)
    generate(tmp_path / "threads", SMALL, workers=2)
    assert summary["partitions"] == 2
    assert sorted(p.name for p in (one_worker / "events").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    for other in (tmp_path / "two", tmp_path / "threads"):
        assert digests(other / "events") == digests(one_worker / "events")  # byte-identical files
        pd.testing.assert_frame_equal(sorted_events(other), sorted_events(one_worker))
        assert (other / "items.parquet").read_bytes() == (one_worker / "items.parquet").read_bytes()


def test_columns_dtypes_and_summary(one_worker):
    events = pd.read_parquet(one_worker / "events")
    assert {c: str(t) for c, t in events.dtypes.items()} == {
        "user_id": "Int64", "item_id": "int64", "event_type": "string", "timestamp": "datetime64[ns]",
        "session_id": "int64", "value": "float64"}
    assert 0.9 * SMALL.events < len(events) < 1.1 * SMALL.events
    assert set(events["event_type"].dropna()) == {"view", "click", "cart", "purchase", "hover"}
    catalogue = pd.read_parquet(one_worker / "items.parquet")
    assert len(catalogue) == SMALL.items and set(events["item_id"]) <= set(catalogue["item_id"])
    assert not list(one_worker.glob(".*"))  # no staging leftovers


def test_cli_workers_give_the_same_files(one_worker, tmp_path, capsys):
    from homerank.jobs.cli import main

    argv = ["generate", "--users", "400", "--items", "200", "--events", "20000", "--seed", "5", "--quiet",
            "--users-per-partition", "200"]
    assert main([*argv, "--out", str(tmp_path / "cli2"), "--workers", "2"]) == 0  # two worker processes
    assert "2 partitions" in capsys.readouterr().out
    assert digests(tmp_path / "cli2" / "events") == digests(one_worker / "events")


def test_partitions_are_bounded_by_partition_events(tmp_path):
    spec = replace(SMALL, users=2_000, users_per_partition=10_000, partition_events=2_000)
    plan = plan_partitions(spec)
    summary = generate(tmp_path, spec, workers=2)
    parts = sorted((tmp_path / "events").iterdir())
    assert len(parts) == len(plan) == summary["partitions"] >= math.ceil(summary["events"] / 2_000)
    seen_users: set[int] = set()
    sessions = []
    for part, planned in zip(parts, plan, strict=True):
        frame = pd.read_parquet(part)
        assert 0 < len(frame) <= spec.partition_events
        users = set(frame["user_id"].dropna())
        assert users <= set(range(planned.first_user + 1_000_000, planned.last_user + 1_000_000))
        assert not users & seen_users  # every user's events stay in one partition
        seen_users |= users
        sessions.append(frame["session_id"])
    all_sessions = pd.concat(sessions).drop_duplicates()
    assert all_sessions.is_unique and all_sessions.min() == 0


def test_plan_covers_every_user_once_and_respects_the_caps():
    spec = replace(SMALL, users=3 * USER_BLOCK + 17, events=600_000, users_per_partition=1_000, partition_events=20_000)
    plan = plan_partitions(spec)
    assert plan[0].first_user == 0 and plan[-1].last_user == spec.users
    sessions = user_sessions(spec, 0, spec.users)
    for before, after in itertools.pairwise(plan):
        assert before.last_user == after.first_user
        assert after.first_session == before.first_session + sessions[before.first_user : before.last_user].sum()
    target = target_events(spec)
    for part in plan:
        assert 0 < part.last_user - part.first_user <= spec.users_per_partition
        assert part.expected_events <= target or part.last_user - part.first_user == 1
    # the target leaves z standard deviations free: mu + z sqrt(kappa mu) = partition_events
    assert target + Z_MARGIN * math.sqrt(dispersion(spec) * target) == pytest.approx(spec.partition_events)


def test_user_draws_do_not_depend_on_the_range_asked():
    spec = replace(SMALL, users=2 * USER_BLOCK + 5)
    whole = user_sessions(spec, 0, spec.users)
    cut = USER_BLOCK - 3
    np.testing.assert_array_equal(np.concatenate([user_sessions(spec, 0, cut), user_sessions(spec, cut, spec.users)]),
                                  whole)


def fail_in_partition_one(monkeypatch):
    import homerank.engine.synthetic as synthetic

    real = synthetic.partition_events

    def failing(spec, world, number, *args):
        if number == 1:
            raise RuntimeError("injected failure")
        return real(spec, world, number, *args)

    monkeypatch.setattr(synthetic, "partition_events", failing)


def test_a_failed_partition_leaves_no_output(tmp_path, monkeypatch):
    fail_in_partition_one(monkeypatch)
    with pytest.raises(HomerankError, match=r"partition 1 \(part-00001.parquet\) failed .*injected failure"):
        generate(tmp_path, SMALL, workers=2)
    assert list(tmp_path.iterdir()) == []  # no events/, no items.parquet, no staging folder


def test_a_failed_partition_keeps_the_previous_output(one_worker, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "log"
    shutil.copytree(one_worker, out)
    before = digests(out / "events")
    fail_in_partition_one(monkeypatch)
    with pytest.raises(HomerankError):
        generate(out, replace(SMALL, seed=6), workers=2)
    assert digests(out / "events") == before
    assert sorted(p.name for p in out.iterdir()) == ["events", "items.parquet"]


def test_cli_reports_a_failed_partition_in_one_line(tmp_path, monkeypatch, capsys):
    from distributed import LocalCluster

    from homerank.jobs.cli import main

    fail_in_partition_one(monkeypatch)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        code = main(["generate", "--out", str(tmp_path / "log"), "--users", "400", "--items", "200", "--events",
                     "20000", "--seed", "5", "--users-per-partition", "200", "--quiet",
                     "--scheduler", cluster.scheduler_address])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("homerank: error: generate: partition 1") and "\n" not in error
    assert not (tmp_path / "log" / "events").exists()


@pytest.mark.parametrize("option", ["--partition-events", "--users-per-partition", "--workers"])
def test_cli_refuses_non_positive_sizes(tmp_path, capsys, option):
    from homerank.jobs.cli import main

    assert main(["generate", "--out", str(tmp_path), option, "0"]) == 2
    assert option in capsys.readouterr().err
