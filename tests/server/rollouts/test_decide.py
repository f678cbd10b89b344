"""next_actions tables: order of batches, budgets, control-plane gate, pause, abort, restart."""

from __future__ import annotations

import pytest

from server.rollouts.decide import (
    Actions,
    Limits,
    MachineState,
    RolloutStatus,
    next_actions,
)
from server.rollouts.planner import Batch, BatchKind

P, A, S, F, K = (
    MachineState.PENDING,
    MachineState.ACTIVE,
    MachineState.SUCCEEDED,
    MachineState.FAILED,
    MachineState.SKIPPED,
)
R = RolloutStatus

TWO_BATCHES = [
    Batch(0, BatchKind.REGULAR, "a", ("a1", "a2")),
    Batch(1, BatchKind.REGULAR, "b", ("b1", "b2")),
]
CONTROL = [
    Batch(0, BatchKind.CONTROL_PLANE, "", ("c1",)),
    Batch(1, BatchKind.CONTROL_PLANE, "", ("c2",)),
    Batch(2, BatchKind.CONTROL_PLANE, "", ("c3",)),
    Batch(3, BatchKind.REGULAR, "", ("w1",)),
]
ALL_HEALTHY = {m: True for m in ("a1", "a2", "b1", "b2", "c1", "c2", "c3", "w1")}


def states(**kw: MachineState) -> dict[str, MachineState]:
    return kw


CASES = [
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=P, a2=P, b1=P, b2=P),
        Limits(2, 0),
        ALL_HEALTHY,
        Actions(start=("a1", "a2")),
        id="first batch starts whole",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=S, a2=A, b1=P, b2=P),
        Limits(4, 0),
        ALL_HEALTHY,
        Actions(waiting_for="batch 0: 1 machine(s) in flight"),
        id="next batch waits for the whole previous batch (never two domains)",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=S, a2=S, b1=P, b2=P),
        Limits(1, 0),
        ALL_HEALTHY,
        Actions(start=("b1",)),
        id="max_unavailable limits starts within a batch",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=S, a2=S, b1=A, b2=P),
        Limits(1, 0),
        ALL_HEALTHY,
        Actions(waiting_for="max_unavailable 1 reached (1 in flight, 0 unhealthy)"),
        id="no room while one is in flight",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=P, a2=P, b1=P, b2=P),
        Limits(2, 0),
        {**ALL_HEALTHY, "b2": False},
        Actions(start=("a1",)),
        id="an unhealthy pending machine counts as away",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=F, a2=S, b1=P, b2=P),
        Limits(2, 1),
        ALL_HEALTHY,
        Actions(start=("b1", "b2")),
        id="a failure within the budget goes on",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=F, a2=A, b1=P, b2=P),
        Limits(2, 0),
        ALL_HEALTHY,
        Actions(
            waiting_for="halting: 1 machine(s) failed, more than the failure budget of 0; "
            "1 in flight"
        ),
        id="over budget: wait for in-flight, start nothing",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=F, a2=S, b1=P, b2=P),
        Limits(2, 0),
        ALL_HEALTHY,
        Actions(
            skip=("b1", "b2"),
            status=R.FAILED,
            reason="1 machine(s) failed, more than the failure budget of 0",
        ),
        id="over budget: halt, later batches untouched",
    ),
    pytest.param(
        R.PAUSED,
        TWO_BATCHES,
        states(a1=S, a2=S, b1=P, b2=P),
        Limits(2, 0),
        ALL_HEALTHY,
        Actions(waiting_for="paused"),
        id="paused starts nothing",
    ),
    pytest.param(
        R.ABORTING,
        TWO_BATCHES,
        states(a1=A, a2=S, b1=P, b2=P),
        Limits(2, 0),
        ALL_HEALTHY,
        Actions(waiting_for="1 machine(s) in flight to finish"),
        id="aborting waits for in-flight",
    ),
    pytest.param(
        R.ABORTING,
        TWO_BATCHES,
        states(a1=S, a2=S, b1=P, b2=P),
        Limits(2, 0),
        ALL_HEALTHY,
        Actions(skip=("b1", "b2"), status=R.ABORTED, reason="aborted by an operator"),
        id="aborted: the rest skipped",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=S, a2=S, b1=S, b2=S),
        Limits(2, 0),
        ALL_HEALTHY,
        Actions(status=R.SUCCEEDED, reason="every machine finished"),
        id="all done",
    ),
    pytest.param(
        R.RUNNING,
        TWO_BATCHES,
        states(a1=S, a2=F, b1=S, b2=S),
        Limits(2, 1),
        ALL_HEALTHY,
        Actions(
            status=R.COMPLETED_WITH_FAILURES,
            reason="1 machine(s) failed, within the failure budget",
        ),
        id="done with failures within budget",
    ),
    pytest.param(
        R.SUCCEEDED,
        TWO_BATCHES,
        states(a1=S, a2=S, b1=S, b2=S),
        Limits(2, 0),
        ALL_HEALTHY,
        Actions(),
        id="terminal: nothing",
    ),
    pytest.param(
        R.RUNNING,
        CONTROL,
        states(c1=P, c2=P, c3=P, w1=P),
        Limits(5, 0),
        ALL_HEALTHY,
        Actions(start=("c1",)),
        id="control plane: one, while the others are healthy",
    ),
    pytest.param(
        R.RUNNING,
        CONTROL,
        states(c1=S, c2=P, c3=P, w1=P),
        Limits(5, 0),
        {**ALL_HEALTHY, "c1": False},
        Actions(waiting_for="control plane not healthy: c1"),
        id="control plane: waits until the upgraded member is healthy again",
    ),
    pytest.param(
        R.RUNNING,
        CONTROL,
        states(c1=S, c2=P, c3=P, w1=P),
        Limits(5, 0),
        {k: v for k, v in ALL_HEALTHY.items() if k != "c3"},
        Actions(waiting_for="control plane not healthy: c3"),
        id="control plane: unknown health is unhealthy",
    ),
    pytest.param(
        R.RUNNING,
        CONTROL,
        states(c1=S, c2=S, c3=S, w1=P),
        Limits(5, 0),
        {**ALL_HEALTHY, "c1": False},
        Actions(start=("w1",)),
        id="workers are not gated on control-plane health",
    ),
]


@pytest.mark.parametrize(("status", "batches", "machines", "limits", "healthy", "expected"), CASES)
def test_next_actions(
    status: RolloutStatus,
    batches: list[Batch],
    machines: dict[str, MachineState],
    limits: Limits,
    healthy: dict[str, bool],
    expected: Actions,
) -> None:
    assert next_actions(status, batches, machines, limits, healthy) == expected


def test_replaying_a_decision_after_acting_on_it_starts_nothing_twice() -> None:
    """What a restarted runner sees: the machines it started are ACTIVE in the database."""
    machines = states(a1=P, a2=P, b1=P, b2=P)
    first = next_actions(R.RUNNING, TWO_BATCHES, machines, Limits(2, 0), ALL_HEALTHY)
    for m in first.start:
        machines[m] = A
    again = next_actions(R.RUNNING, TWO_BATCHES, machines, Limits(2, 0), ALL_HEALTHY)
    assert again.start == ()
    assert set(first.start) == {"a1", "a2"}


def test_rollout_to_completion_visits_every_machine_once() -> None:
    batches = [Batch(i, BatchKind.REGULAR, f"r{i}", (f"m{i}a", f"m{i}b")) for i in range(5)]
    machines = {m: P for b in batches for m in b.machines}
    started: list[str] = []
    status = R.RUNNING
    for _ in range(100):
        act = next_actions(status, batches, machines, Limits(2, 0), {})
        if act.status:
            status = act.status
        if status.terminal:
            break
        started += act.start
        for m in act.start:
            machines[m] = A
        for m in [m for m, s in machines.items() if s is A]:
            machines[m] = S
    assert status is R.SUCCEEDED
    assert started == [m for b in batches for m in b.machines]
