"""The machine lifecycle as one transition table.

A machine's ``phase`` (:class:`server.types.Phase`) changes only along the edges below; an
operator's ``PATCH`` asking for any other change is refused with 409 ``phase_transition`` naming
the phases it may go to. The shape follows Ironic's provision states and Metal3's
BareMetalHost states, simplified:

* ``discovered -> registered``: an operator accepts a machine the boot plane found.
* ``registered -> provisioning -> ready | failed``: install; ``registered -> ready`` adopts a
  machine that is already installed (Ironic's *adopt*).
* ``ready -> upgrading -> ready | failed``; ``ready -> provisioning`` reinstalls;
  ``ready -> registered`` releases it.
* ``failed -> provisioning`` retries, ``failed -> registered`` gives up on the install; a failed
  machine never becomes ``ready`` by decree: it is reinstalled or adopted again.
* ``provisioning -> registered`` aborts an install.
* ``maintenance`` is reachable from every phase (an operator, or power sync after repeated BMC
  faults, stops automation at any time) and leaves to where a machine may resume: registered,
  provisioning or ready.
* ``-> discovered`` forgets the acceptance (the machine must be accepted again; its enrollment
  token is wiped), from any phase where nothing is in flight.

Asking for the phase a machine is already in is a no-op, never refused. Creating a machine
(``POST``) may start it in any phase: that is declaring, not transitioning.
"""

from __future__ import annotations

from server.types import Phase

P = Phase

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    P.DISCOVERED: frozenset({P.REGISTERED, P.MAINTENANCE}),
    P.REGISTERED: frozenset({P.PROVISIONING, P.READY, P.MAINTENANCE, P.DISCOVERED}),
    P.PROVISIONING: frozenset({P.READY, P.FAILED, P.REGISTERED, P.MAINTENANCE}),
    P.READY: frozenset({P.UPGRADING, P.PROVISIONING, P.REGISTERED, P.MAINTENANCE, P.DISCOVERED}),
    P.UPGRADING: frozenset({P.READY, P.FAILED, P.MAINTENANCE}),
    P.FAILED: frozenset({P.REGISTERED, P.PROVISIONING, P.MAINTENANCE, P.DISCOVERED}),
    P.MAINTENANCE: frozenset({P.REGISTERED, P.PROVISIONING, P.READY, P.DISCOVERED}),
}
"""Phase -> the phases it may change to (besides itself, which is always a no-op)."""


def allowed_targets(current: Phase) -> list[Phase]:
    """Where a machine in ``current`` may go, in the enum's order."""
    return [p for p in Phase if p in TRANSITIONS[current]]


def may_transition(current: Phase, target: Phase) -> bool:
    """Whether ``current -> target`` is in the lifecycle (staying put always is)."""
    return current == target or target in TRANSITIONS[current]
