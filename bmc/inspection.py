"""Out-of-band inspection: what a BMC says about its host without booting it.

A Redfish ``ComputerSystem`` (DSP8010) carries ``UUID`` (the SMBIOS system UUID),
``SerialNumber``, ``Manufacturer``, ``Model``, ``ProcessorSummary`` and ``MemorySummary``; its
``EthernetInterfaces`` collection lists the host's NICs with their ``MACAddress`` (what Ironic's
``redfish`` inspect interface reads). IPMI offers less: Get System GUID (NetFn App, cmd 37h, the
SMBIOS UUID on most boards; IPMI 2.0 section 22.14) or Get Device GUID (cmd 08h, the BMC's own),
and the FRU inventory's product area (manufacturer, name, serial; Platform Management FRU
Information Storage Definition v1.0 section 11).

:class:`Inspection` is the answer in bronze's words; drivers fill what their protocol offers and
leave the rest ``None``.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Inspection:
    """Hardware facts read through a BMC; ``None`` / empty where the BMC did not say."""

    uuid: str | None = None
    """SMBIOS system UUID, lower-case canonical form."""
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    macs: tuple[str, ...] = ()
    """Host NIC MACs, lower-case colon form, sorted."""
    cpu_count: int | None = None
    cpu_arch: str | None = None
    memory_gib: float | None = None
    bmc_guid: str | None = None
    """IPMI Get Device GUID: the BMC's own GUID (not the host's UUID)."""
    source: str = ""
    """Where each fact came from, for people (e.g. ``redfish``, ``ipmi:system-guid``)."""

    def facts(self) -> dict[str, Any]:
        """The facts as a JSON object (``None`` values left out)."""
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "model": self.model,
            "macs": list(self.macs),
            "cpu_count": self.cpu_count,
            "cpu_arch": self.cpu_arch,
            "memory_gib": self.memory_gib,
            "bmc_guid": self.bmc_guid,
            "source": self.source,
        }
        return {k: v for k, v in out.items() if v not in (None, [], "")}


@runtime_checkable
class Inspector(Protocol):
    """A driver that can inspect its host (one or a few BMC calls)."""

    def inspect(self) -> Inspection: ...


def canonical_uuid(value: object) -> str | None:
    """``str(UUID)`` of a UUID-ish value; None for empty, all-zero or unparsable ones."""
    if value is None:
        return None
    try:
        u = uuidlib.UUID(str(value).strip())
    except ValueError:
        return None
    return None if u.int == 0 or u.int == (1 << 128) - 1 else str(u)


def canonical_mac(value: object) -> str | None:
    """Lower-case colon form of a 48-bit MAC, else None."""
    if not isinstance(value, str):
        return None
    hexpart = "".join(c for c in value.lower() if c in "0123456789abcdef")
    if len(hexpart) != 12 or hexpart in ("000000000000", "ffffffffffff"):
        return None
    return ":".join(hexpart[i : i + 2] for i in range(0, 12, 2))
