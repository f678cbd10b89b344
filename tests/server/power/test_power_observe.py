"""The power-sync rule (:func:`server.power.observe.observe`), pure, tested with a table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bmc import PowerState
from server.power.observe import Before, Outcome, Reading, observe

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ON, OFF, UNKNOWN = PowerState.on, PowerState.off, PowerState.unknown
ERR = "BMC 10.0.0.12:623 did not answer (4 tries in 16 s)"


def before(
    observed: PowerState = ON, failures: int = 0, phase: str = "ready", held: bool = False
) -> Before:
    return Before(observed, failures, phase, held)


CASES = [
    # (before, reading, observed, failures, error, maintenance?, event kinds)
    ("same state", before(ON), Reading(ON), ON, 0, None, False, ()),
    ("out of band", before(OFF), Reading(ON), ON, 0, None, False, ("power.changed",)),
    ("changed by an operation", before(OFF, held=True), Reading(ON), ON, 0, None, False, ()),
    ("first state seen", before(UNKNOWN), Reading(OFF), OFF, 0, None, False, ()),
    ("recovery resets the count", before(UNKNOWN, 2), Reading(ON), ON, 0, None, False, ()),
    (
        "first failure",
        before(ON),
        Reading(UNKNOWN, ERR),
        UNKNOWN,
        1,
        ERR,
        False,
        ("power.sync_failed",),
    ),
    (
        "second failure",
        before(UNKNOWN, 1),
        Reading(UNKNOWN, ERR),
        UNKNOWN,
        2,
        ERR,
        False,
        ("power.sync_failed",),
    ),
    (
        "third failure: maintenance",
        before(UNKNOWN, 2),
        Reading(UNKNOWN, ERR),
        UNKNOWN,
        3,
        ERR,
        True,
        ("power.sync_failed", "machine.maintenance"),
    ),
    (
        "already in maintenance",
        before(UNKNOWN, 5, phase="maintenance"),
        Reading(UNKNOWN, ERR),
        UNKNOWN,
        6,
        ERR,
        False,
        ("power.sync_failed",),
    ),
]


@pytest.mark.parametrize(
    "prev,reading,observed,failures,error,maintenance,kinds",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_observe(
    prev: Before,
    reading: Reading,
    observed: PowerState,
    failures: int,
    error: str | None,
    maintenance: bool,
    kinds: tuple[str, ...],
) -> None:
    out: Outcome = observe(prev, reading, NOW, max_failures=3)
    assert (out.observed, out.observed_at, out.failures, out.error) == (
        observed,
        NOW,
        failures,
        error,
    )
    assert (out.maintenance is not None) == maintenance
    assert tuple(e.kind for e in out.events) == kinds


def test_maintenance_reason_and_event_data() -> None:
    out = observe(before(UNKNOWN, 2), Reading(UNKNOWN, ERR), NOW, max_failures=3)
    assert out.maintenance == f"BMC unreachable: 3 power-state reads failed; last: {ERR}"
    assert [e.data for e in out.events] == [{"failures": 3}, {"from": "ready"}]
    changed = observe(before(OFF), Reading(ON), NOW, max_failures=3)
    assert changed.events[0].data == {"from": "off", "to": "on"}
    assert changed.events[0].message == "power changed out of band: off -> on"
