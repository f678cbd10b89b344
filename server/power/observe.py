"""What one power-state read means for a machine: the rule of power sync, as a pure function.

Power sync (and a live ``GET /machines/{key}/power``) reads a BMC and hands the result to
:func:`observe` together with what the machine looked like before. The answer says what to
record, whether the machine goes to ``maintenance``, and which events to write; the caller
(:mod:`server.power.sync`) only applies it. The rule:

- A successful read records the state, clears the error and the failure count. A change that no
  operation caused (the machine was not held, and the previous state was known) is an
  out-of-band change: ``power.changed``.
- A failed read records ``unknown`` with the error (never the last known state: a guess would
  let a controller act on a state nobody saw), counts the failure and writes
  ``power.sync_failed``. At ``max_failures`` failures in a row a machine not already in
  maintenance goes there with a fault reason (``machine.maintenance``); power sync stops polling
  it until an operator takes it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bmc import PowerState
from server.types import Phase


@dataclass(frozen=True)
class Before:
    """The machine as it was before this read."""

    observed: PowerState
    failures: int
    phase: str
    held: bool
    """An operation holds the machine: a change is its doing, not out of band."""


@dataclass(frozen=True)
class Reading:
    """One read of the BMC: a state, or the operator sentence of why it failed."""

    state: PowerState
    error: str | None = None


@dataclass(frozen=True)
class EventSpec:
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What to record on the machine."""

    observed: PowerState
    observed_at: datetime
    failures: int
    error: str | None
    maintenance: str | None
    """The fault reason when the machine goes to maintenance now, else ``None``."""
    events: tuple[EventSpec, ...] = ()


def observe(before: Before, reading: Reading, now: datetime, *, max_failures: int) -> Outcome:
    """The rule above, for one read at ``now``."""
    if reading.error is None:
        changed = before.observed not in (PowerState.unknown, reading.state)
        events: tuple[EventSpec, ...] = ()
        if changed and not before.held:
            events = (
                EventSpec(
                    "power.changed",
                    f"power changed out of band: {before.observed} -> {reading.state}",
                    {"from": before.observed.value, "to": reading.state.value},
                ),
            )
        return Outcome(reading.state, now, 0, None, None, events)
    failures = before.failures + 1
    failed = EventSpec(
        "power.sync_failed",
        f"power state read failed ({failures} in a row): {reading.error}",
        {"failures": failures},
    )
    if failures < max_failures or before.phase == Phase.MAINTENANCE.value:
        return Outcome(PowerState.unknown, now, failures, reading.error, None, (failed,))
    reason = f"BMC unreachable: {failures} power-state reads failed; last: {reading.error}"
    to_maintenance = EventSpec("machine.maintenance", reason, {"from": before.phase})
    return Outcome(
        PowerState.unknown, now, failures, reading.error, reason, (failed, to_maintenance)
    )
