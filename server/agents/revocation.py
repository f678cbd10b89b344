"""Certificate revocation: when a machine's client certificate stops opening sessions.

A client certificate is valid for 24 h, so expiry alone would let an old one keep opening
sessions (and receiving the machine's config) long after the machine was reprovisioned. bronze
therefore keeps, per machine, the serials of the certificates that may open a session
(``agent_states.cert_serial``, plus ``cert_previous_serial`` right after a renewal) and admits a
session only when the peer certificate's serial is one of them (:func:`certificate_accepted`).
This is an allowlist of one (or two) serials, not a CRL: nothing has to be distributed, and
revoking means forgetting the serial.

A machine's certificates stop working when

* it **enrolls again** (a new certificate from ``Enroll`` replaces every earlier one);
* it is **deprovisioned** (``server.rollouts.deprovision``);
* an operator sets its phase to ``provisioning`` or ``discovered`` (**reprovision**,
  :func:`on_phase_change`) or calls ``POST /api/v1/machines/{id}/agent/revoke``
  (:func:`revoke`; event ``agent.certificate.revoked``);
* it is **deleted** (its agent state goes with it).

A renewal over the session keeps the renewed-from serial as ``cert_previous_serial`` until the
agent opens a session with the new one (a ``NewCertificate`` lost on the way must not lock the
agent out); enrollment and revocation clear it. Sessions already open with a certificate that is
no longer accepted are closed: at once on the replica that revoked it, and by every replica's
sweep (every ``seen_flush_interval``, 5 s) for the sessions it holds.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from sqlalchemy.orm import Session

from server.agents.store import certificate_accepted
from server.inventory import machines as inventory
from server.inventory import readcache
from server.inventory.models import AgentState, Machine, utcnow
from server.types import EventKind, Phase

__all__ = [
    "REPROVISION_PHASES",
    "RevokeReason",
    "certificate_accepted",
    "on_phase_change",
    "revoke",
]

log = logging.getLogger(__name__)

REPROVISION_PHASES = frozenset({Phase.PROVISIONING.value, Phase.DISCOVERED.value})


class RevokeReason(StrEnum):
    """Why a machine's client certificates were revoked."""

    OPERATOR = "operator"
    """An operator called ``POST /api/v1/machines/{id}/agent/revoke``."""
    REPROVISION = "reprovision"
    """The machine's phase was set to ``provisioning`` or ``discovered``."""
    DEPROVISION = "deprovision"
    """The machine was deprovisioned (``POST /api/v1/machines/{id}/deprovision``)."""


def revoke(
    s: Session, machine_id: str, *, reason: RevokeReason, actor: str, always_record: bool = False
) -> list[str]:
    """Forget the machine's accepted serials in the caller's transaction; returns them.
    Records ``agent.certificate.revoked`` when any was accepted (or ``always_record``)."""
    st = s.get(AgentState, machine_id)
    serials = [] if st is None else [x for x in (st.cert_serial, st.cert_previous_serial) if x]
    if st is not None:
        st.cert_serial = st.cert_previous_serial = None
        st.cert_revoked_at = utcnow()
        readcache.mark(s, readcache.CERTIFICATES)  # every replica's sweep looks again
    if serials or always_record:
        inventory.record(
            s,
            actor=actor,
            kind=EventKind.AGENT_CERTIFICATE_REVOKED,
            machine_id=machine_id,
            message=f"agent client certificate revoked: {reason}",
            data={"reason": reason.value, "serials": serials},
        )
        log.info(
            "certificates revoked machine=%s reason=%s serials=%s", machine_id, reason, serials
        )
    return serials


def on_phase_change(s: Session, m: Machine, actor: str) -> None:
    """``m.phase`` was just changed by an operator (``server.api.machines``): a reprovisioned
    machine's old certificates must not open sessions."""
    if m.phase in REPROVISION_PHASES:
        revoke(s, m.id, reason=RevokeReason.REPROVISION, actor=actor)
