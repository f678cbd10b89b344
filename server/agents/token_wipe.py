"""When a machine's outstanding agent enrollment token must stop working.

A bootstrap token (``server.agents.tokens``) is bound to one boot of one machine. Besides being
consumed by ``Enroll``, it is wiped when that boot cannot be the one enrolling any more:

* **power-off**: when a power operation that stops or restarts the machine (off, soft-off,
  cycle, reset) starts on it (before the BMC is told, so a token the boot plane issues for the
  *next* boot is never touched), and when power sync observes the machine off;
* **reprovision**: when the machine's phase is set to ``provisioning`` or ``discovered``.

Each function takes the caller's database session, so the wipe commits (or not) with the change
that caused it, and records an ``agent.token.wiped`` event when a token was outstanding.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bmc import PowerState
from server.inventory import machines as inventory
from server.inventory.models import AgentBootstrapToken, Machine, Operation, OperationItem
from server.types import EventKind, Phase

log = logging.getLogger(__name__)

POWER_DOWN_ACTIONS = frozenset({"off", "soft-off", "cycle", "reset"})
REPROVISION_PHASES = frozenset({Phase.PROVISIONING.value, Phase.DISCOVERED.value})


def wipe_token(s: Session, machine_id: str, *, reason: str, actor: str) -> bool:
    """Delete the machine's enrollment token; True when it was an outstanding (unspent) one. A
    spent one goes silently: with it goes the grace window in which a retry of the enrollment
    that spent it is answered again (``server.agents.tokens``)."""
    t = AgentBootstrapToken
    spent = s.scalar(select(t.spent_at).where(t.machine_id == machine_id))
    res = s.execute(delete(t).where(t.machine_id == machine_id))
    if not res.rowcount or spent is not None:  # type: ignore[attr-defined]
        return False
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.AGENT_TOKEN_WIPED,
        machine_id=machine_id,
        message=f"agent enrollment token wiped: {reason}",
        data={"reason": reason},
    )
    log.info("enrollment token wiped machine=%s reason=%s", machine_id, reason)
    return True


def on_power_items_start(s: Session, starts: list[tuple[Operation, OperationItem]]) -> None:
    """Each ``(op, item)``: ``op`` is about to act on ``item``'s machine (``server.power.writes``,
    a batch of item starts). ``op`` is passed in, not loaded: loading it would load all its items
    (one per machine of a bulk operation). One query finds the machines that hold a token: a
    statement per machine cost more CPU than the rest of the item's start."""
    down = {
        item.machine_id: op
        for op, item in starts
        if op.kind == "power" and op.action in POWER_DOWN_ACTIONS
    }
    if not down:
        return
    holders = s.scalars(
        select(AgentBootstrapToken.machine_id).where(AgentBootstrapToken.machine_id.in_(down))
    )
    for machine_id in set(holders):
        op = down[machine_id]
        wipe_token(s, machine_id, reason=f"power {op.action}", actor=op.requested_by)


def on_power_observed(s: Session, m: Machine) -> None:
    """Power sync (or a live read) recorded ``m.power_observed`` (``server.power.service``)."""
    if m.power_observed == PowerState.off.value:
        wipe_token(s, m.id, reason="observed powered off", actor="power-sync")


def on_phase_change(s: Session, m: Machine, actor: str) -> None:
    """``m.phase`` was just changed by an operator (``server.api.machines``)."""
    if m.phase in REPROVISION_PHASES:
        wipe_token(s, m.id, reason=f"reprovision (phase {m.phase})", actor=actor)
