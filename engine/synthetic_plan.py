"""Which users each partition of the synthetic log owns: contiguous user ranges, fixed by the spec alone.

Each user's events stay in one partition (so sessions and timestamps stay consistent per user) and the plan does
not depend on how many workers run it. Users are packed greedily in index order, closing a partition before the
next user would push its *expected* event count past a target μ* or its user count past ``users_per_partition``.

The expected count of a range is known exactly once the session counts S_u are drawn (stream 2, one block of
users at a time, so the plan streams over the users in O(USER_BLOCK + partitions) memory):
E[N | S] = (1 + d) · E[X] · Σ S_u, with E[X] the clean events per session and d the duplicate + dirty shares.
Given S, N is a sum of Σ S_u independent session sizes X with Var(X) = E[V]·Var(Y) + Var(V)·E[Y]², so
sd(N) ≈ sqrt(κ·μ) with κ = (1 + d)·Var(X)/E[X]. The target μ* solves μ* + z·sqrt(κ·μ*) = partition_events with
z = 6: a partition goes past ``partition_events`` rows with probability below 1e-9. The one exception: a
single user expected to make more than μ* events gets a partition of its own (users are never split).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from homerank.engine.synthetic_model import (
    USER_BLOCK,
    SyntheticSpec,
    block_sessions,
    events_per_session,
    events_per_view,
)

Z_MARGIN = 6.0  # standard deviations kept free below partition_events


@dataclass(frozen=True)
class Partition:
    """Partition ``number`` owns users first_user..last_user-1 and sessions from ``first_session`` on;
    ``expected_events`` = E[N | S] (duplicates and dirty rows included)."""

    number: int
    first_user: int
    last_user: int
    first_session: int
    expected_events: float


def noise_factor(spec: SyntheticSpec) -> float:
    return 1 + spec.duplicate_fraction + spec.dirty_fraction


def rows_per_session(spec: SyntheticSpec) -> float:
    """Expected rows of one session: its events and, with probability ``search_share``, one search."""
    return events_per_session(spec) + spec.search_share


def dispersion(spec: SyntheticSpec) -> float:
    """κ = (1 + d)·Var(X)/E[X] for X the clean rows of one session (see the module docstring; a search, a
    Bernoulli(search_share) row, adds its variance and mean)."""
    p1 = spec.p_click
    p2 = p1 * spec.p_cart
    p3 = p2 * spec.p_purchase
    mean_z = p1 + p2 + p3  # Z = Y - 1, P(Z >= k) = p_k
    var_y = (p1 + 3 * p2 + 5 * p3) - mean_z**2  # E[Z^2] = sum_k (2k - 1) P(Z >= k)
    var_x = (1 + spec.views_per_session) * var_y + spec.views_per_session * events_per_view(spec) ** 2
    p = spec.search_share
    return noise_factor(spec) * (var_x + p * (1 - p)) / rows_per_session(spec)


def target_events(spec: SyntheticSpec) -> float:
    """μ* with μ* + z·sqrt(κ·μ*) = partition_events (a quadratic in sqrt(μ*))."""
    a = Z_MARGIN * math.sqrt(dispersion(spec))
    root = (-a + math.sqrt(a * a + 4 * spec.partition_events)) / 2
    return root * root


def _session_blocks(spec: SyntheticSpec) -> Iterator[np.ndarray]:
    for block in range(math.ceil(spec.users / USER_BLOCK)):
        yield block_sessions(spec, block)


def plan_partitions(spec: SyntheticSpec) -> list[Partition]:
    """Greedy packing of users 0..users-1 into partitions (see the module docstring); O(partitions) output."""
    target = target_events(spec)
    per_session = rows_per_session(spec) * noise_factor(spec)
    plan: list[Partition] = []
    first_user = first_session = 0  # the open partition
    users = sessions = 0  # in the open partition
    expected = 0.0

    def close(last_user: int) -> None:
        nonlocal first_user, first_session, users, sessions, expected
        plan.append(Partition(len(plan), first_user, last_user, first_session, expected))
        first_user, first_session = last_user, first_session + sessions
        users = sessions = 0
        expected = 0.0

    block_start = 0
    for block in _session_blocks(spec):
        cumulative = np.cumsum(block * per_session)  # (n,) expected events of users 0..k of the block
        cumulative_sessions = np.cumsum(block)
        pos = 0
        while pos < block.size:
            base = cumulative[pos - 1] if pos else 0.0
            fits = int(np.searchsorted(cumulative, base + (target - expected), side="right"))
            end = min(fits, pos + spec.users_per_partition - users, block.size)
            if end <= pos:  # the next user does not fit
                if users:
                    close(block_start + pos)
                    continue
                end = pos + 1  # a single user above the target: a partition of its own
            expected += float(cumulative[end - 1] - base)
            sessions += int(cumulative_sessions[end - 1] - (cumulative_sessions[pos - 1] if pos else 0))
            users += end - pos
            pos = end
            if pos < block.size:  # stopped by the target or the user cap, not by the end of the block
                close(block_start + pos)
        block_start += block.size
    if users:
        close(block_start)
    return plan
