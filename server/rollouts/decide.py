"""What a rollout does next (pure): the persisted state in, the actions out.

The runner calls :func:`next_actions` after every change it records (a machine started,
finished, failed; an operator paused, resumed, aborted) and carries out what it returns, writing
each action down *before* acting on it. Because the decision is a function of persisted state
only, a restarted server (or another replica that takes over the rollout's lease) computes the
same next step: no machine is started twice and none is skipped (the Kubernetes Deployment
controller's shape: observe, compare, act, idempotently).

Rules, in order:

* an aborting rollout starts nothing; once nothing is in flight it is ``aborted`` and the
  machines never started are ``skipped``;
* more failures than ``failure_budget`` halt the rollout: nothing more starts, and once nothing
  is in flight it is ``failed`` (machines never started are ``skipped``);
* a paused rollout starts nothing;
* batches run strictly in order: the next one starts only when every machine of the previous
  one has finished (so two failure domains are never disturbed at once);
* within the current batch, machines start while fewer than ``max_unavailable`` machines of the
  selection are away (in flight, or unhealthy outside the rollout's control);
* a control-plane machine starts only while every *other* control-plane machine is healthy and
  no other one is in flight;
* when every batch has finished the rollout is ``succeeded`` (no failures) or
  ``completed_with_failures`` (failures within the budget).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from server.rollouts.planner import Batch, BatchKind


class RolloutStatus(StrEnum):
    """Where a rollout as a whole stands."""

    RUNNING = "running"
    """Starting and finishing machines, batch after batch."""
    PAUSED = "paused"
    """Starts nothing new; machines in flight finish."""
    ABORTING = "aborting"
    """Asked to stop: starts nothing new, waits for machines in flight."""
    ABORTED = "aborted"
    """Stopped by an operator; machines never started were skipped."""
    SUCCEEDED = "succeeded"
    """Every machine finished its steps."""
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    """Every batch ran; some machines failed, no more than the failure budget."""
    FAILED = "failed"
    """Halted: more machines failed than the failure budget allows."""

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_ROLLOUT


_TERMINAL_ROLLOUT = {
    RolloutStatus.ABORTED,
    RolloutStatus.SUCCEEDED,
    RolloutStatus.COMPLETED_WITH_FAILURES,
    RolloutStatus.FAILED,
}


class MachineState(StrEnum):
    """One machine's place in a rollout, as far as batching is concerned."""

    PENDING = "pending"
    """Not started."""
    ACTIVE = "active"
    """Started: somewhere in its steps."""
    SUCCEEDED = "succeeded"
    """Finished all its steps."""
    FAILED = "failed"
    """Stopped at a step (and, for upgrades, back on its last good image)."""
    SKIPPED = "skipped"
    """Never started: the rollout was aborted or halted first."""

    @property
    def finished(self) -> bool:
        return self in (MachineState.SUCCEEDED, MachineState.FAILED, MachineState.SKIPPED)


CHAIN = 4
"""Transitions one machine may take in one pass: one that only waits (upgrade: booting ->
verifying) is followed by the next one the same report allows (verifying -> confirming)."""


class Chained(Protocol):
    """A transition of any kind's step machine (upgrade, provision)."""

    @property
    def step(self) -> StrEnum: ...
    @property
    def action(self) -> StrEnum: ...
    @property
    def state(self) -> MachineState: ...


def goes_on(before: StrEnum, tr: Chained) -> bool:
    """Whether a pass advances the machine again after ``tr`` (taken from step ``before``): it
    only waits (no action to carry out first), the machine is still in flight, and its step
    moved (the same report may allow the next one)."""
    return tr.action.value == "none" and tr.state is MachineState.ACTIVE and tr.step is not before


@dataclass(frozen=True)
class Limits:
    max_unavailable: int
    failure_budget: int


@dataclass(frozen=True)
class Actions:
    start: tuple[str, ...] = ()
    """Machines to start now, in order."""
    skip: tuple[str, ...] = ()
    """Machines that will never start (abort or halt)."""
    status: RolloutStatus | None = None
    """A new status for the rollout, or None to keep it."""
    reason: str = ""
    """Why the status changes (shown to operators, written in the event)."""
    waiting_for: str = ""
    """Why nothing starts although machines are pending (shown in status)."""


def next_actions(
    status: RolloutStatus,
    batches: Sequence[Batch],
    machines: Mapping[str, MachineState],
    limits: Limits,
    healthy: Mapping[str, bool],
) -> Actions:
    """See the module docstring. ``healthy`` says which machines are healthy now: a control-plane
    machine missing from it counts as unhealthy (its quorum is not risked on a guess); a pending
    machine missing from it counts as healthy (nothing is known against it)."""
    if status.terminal:
        return Actions()
    in_flight = [m for m, s in machines.items() if s is MachineState.ACTIVE]
    failed = sum(1 for s in machines.values() if s is MachineState.FAILED)
    pending = [m for b in batches for m in b.machines if machines[m] is MachineState.PENDING]
    if status is RolloutStatus.ABORTING:
        if in_flight:
            return Actions(waiting_for=f"{len(in_flight)} machine(s) in flight to finish")
        return Actions(
            skip=tuple(pending), status=RolloutStatus.ABORTED, reason="aborted by an operator"
        )
    if failed > limits.failure_budget:
        budget = limits.failure_budget
        reason = f"{failed} machine(s) failed, more than the failure budget of {budget}"
        if in_flight:
            return Actions(waiting_for=f"halting: {reason}; {len(in_flight)} in flight")
        return Actions(skip=tuple(pending), status=RolloutStatus.FAILED, reason=reason)
    current = next((b for b in batches if not all(machines[m].finished for m in b.machines)), None)
    if current is None:
        if failed:
            return Actions(
                status=RolloutStatus.COMPLETED_WITH_FAILURES,
                reason=f"{failed} machine(s) failed, within the failure budget",
            )
        return Actions(status=RolloutStatus.SUCCEEDED, reason="every machine finished")
    if status is RolloutStatus.PAUSED:
        return Actions(waiting_for="paused")
    return _start_in_batch(current, batches, machines, limits, healthy, in_flight)


def _start_in_batch(
    batch: Batch,
    batches: Sequence[Batch],
    machines: Mapping[str, MachineState],
    limits: Limits,
    healthy: Mapping[str, bool],
    in_flight: Sequence[str],
) -> Actions:
    todo = [m for m in batch.machines if machines[m] is MachineState.PENDING]
    if not todo:
        return Actions(waiting_for=f"batch {batch.index}: {len(in_flight)} machine(s) in flight")
    if batch.kind is BatchKind.CONTROL_PLANE:
        others = [
            m
            for b in batches
            if b.kind is BatchKind.CONTROL_PLANE
            for m in b.machines
            if m not in batch.machines
        ]
        sick = sorted(m for m in others if not healthy.get(m, False))
        busy = [m for m in others if machines.get(m) is MachineState.ACTIVE]
        if sick or busy:
            who = ", ".join(sick or busy)
            return Actions(waiting_for=f"control plane not healthy: {who}")
    unhealthy_outside = sum(
        1 for m, s in machines.items() if s is MachineState.PENDING and not healthy.get(m, True)
    )
    room = limits.max_unavailable - len(in_flight) - unhealthy_outside
    if room <= 0:
        return Actions(
            waiting_for=f"max_unavailable {limits.max_unavailable} reached "
            f"({len(in_flight)} in flight, {unhealthy_outside} unhealthy)"
        )
    return Actions(start=tuple(todo[:room]))
