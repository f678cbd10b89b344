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
