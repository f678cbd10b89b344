"""A machine's hardware identity as its agent reports it, against what the inventory recorded.

The SMBIOS UUID and serial are what tie a session to a physical machine beyond its client
certificate (Ironic and MAAS key hardware on them). An agent whose report disagrees with the
record (a disk moved to another chassis, a cloned image, a stolen identity) must not rewrite the
record: the difference becomes an event and a visible condition on the machine
(``agent_states.identity_conflict``) until an operator resolves it. A field never recorded is
learned from the first report; the comparison ignores case and surrounding space.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from server.inventory.machines import record as record_event_row
from server.inventory.models import AgentState, Machine, utcnow
from server.types import EventKind

FIELDS = ("uuid", "serial")


def reported(inventory: Mapping[str, Any]) -> dict[str, str]:
    smbios = inventory.get("smbios") or {}
    return {f: str(smbios.get(f) or "").strip() for f in FIELDS if smbios.get(f)}


def conflicts(recorded: Mapping[str, str | None], report: Mapping[str, str]) -> dict[str, Any]:
    """``{field: {"recorded", "reported"}}`` for each field both know and disagree on."""
    out: dict[str, Any] = {}
    for f in FIELDS:
        old, new = (recorded.get(f) or "").strip(), (report.get(f) or "").strip()
        if old and new and old.lower() != new.lower():
            out[f] = {"recorded": old, "reported": new}
    return out


def check_hello(s: Session, m: Machine, st: AgentState, inventory: dict[str, Any]) -> None:
    """A report whose SMBIOS UUID or serial differs from the record is an event and a
    condition on the machine, never an overwrite (``server.agents.identity``)."""
    recorded_hw = reported(m.hardware or {})
    recorded = {
        "uuid": m.smbios_uuid or recorded_hw.get("uuid"),
        "serial": m.serial or recorded_hw.get("serial"),
    }
    found = conflicts(recorded, reported(inventory))
    if not found:
        st.identity_conflict = None
        return
    if st.identity_conflict is not None and st.identity_conflict.get("fields") == found:
        return  # already recorded and shown
    st.identity_conflict = {"fields": found, "at": utcnow().isoformat()}
    what = ", ".join(f"{f} {v['recorded']} -> {v['reported']}" for f, v in found.items())
    record_event_row(
        s,
        actor="agent-api",
        kind=EventKind.AGENT_IDENTITY_MISMATCH,
        machine=m,
        message=f"agent of {m.name} reports another hardware identity ({what}); the record is kept",
        data={"fields": found},
    )
