"""Pure boot decisions, tested with tables (``tests/server/boot/test_boot_decide.py``).

What a machine gets when its firmware asks (``GET /boot.ipxe``, or a DHCP query from ``pxe``):

=============================  ===================================  =============================
machine                        iPXE script                          DHCP (``BootDecision``)
=============================  ===================================  =============================
unknown MAC, discovery on      the discovery profile                known=false, allow_boot=true
unknown MAC, discovery off     ``exit`` (``BootAction.NONE``)       known=false, allow_boot=false
discovered                     the discovery profile (if on)        known, allow_boot (if on)
registered, provisioning       its profile (most specific match)    known, allow_boot
provisioning, installed        boot from disk (its image written)   known, allow_boot
ready, upgrading               boot from disk                       known, allow_boot
ready, upgrading (diskless)    its profile, serving its own image   known, allow_boot
maintenance, failed            ``exit``: nothing destructive        known, allow_boot=false
=============================  ===================================  =============================

"Discovery on" means ``BRONZE_BOOT_DISCOVERY`` is true *and* the profile it names exists.
Profile choice (``pick_profile``) is matchbox's group rule (``storage/storagepb/group.go``) over
our selectors: among the profiles whose Kubernetes label selector matches
(``server.inventory.selectors.matches``: ``=``, ``in``, ``notin``, ``!key`` ...), the one with the
most requirements wins; ties go to the smallest name. The discovery profile never takes part.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pxe import BootAction, BootDecision
from server.inventory.selectors import Requirement, matches
from server.types import Phase


class ScriptKind(StrEnum):
    """Which script a machine gets."""

    DISCOVERY = "discovery"
    """The discovery profile (unknown or discovered machines)."""
    PROFILE = "profile"
    """The machine's own profile, chosen by labels."""
    DISK = "disk"
    """Boot from the local disk."""
    NONE = "none"
    """``exit``: back to the firmware's next boot device."""


PROFILE_PHASES = frozenset({Phase.REGISTERED, Phase.PROVISIONING})
DISK_PHASES = frozenset({Phase.READY, Phase.UPGRADING})


def script_kind(
    phase: Phase | None, discovery: bool, netboot: bool = False, installed: bool = False
) -> ScriptKind:
    """The script for a machine in ``phase`` (None: unknown MAC); ``netboot``: the machine is
    diskless (``machines.boot_from = network``), so it boots its profile where others boot
    their disk; ``installed``: provisioning wrote its image to disk (``machines.image`` set on a
    disk machine), so its next boot is from that disk, not the installer again."""
    if phase is None or phase is Phase.DISCOVERED:
        return ScriptKind.DISCOVERY if discovery else ScriptKind.NONE
    if phase is Phase.PROVISIONING and installed and not netboot:
        return ScriptKind.DISK
    if phase in PROFILE_PHASES:
        return ScriptKind.PROFILE
    if phase in DISK_PHASES:
        return ScriptKind.PROFILE if netboot else ScriptKind.DISK
    return ScriptKind.NONE


def action_of(kind: ScriptKind) -> BootAction:
    return {
        ScriptKind.DISCOVERY: BootAction.PROFILE,
        ScriptKind.PROFILE: BootAction.PROFILE,
        ScriptKind.DISK: BootAction.DISK,
        ScriptKind.NONE: BootAction.NONE,
    }[kind]


def dhcp_decision(
    phase: Phase | None, discovery: bool, hostname: str | None = None, static_ip: str | None = None
) -> BootDecision:
    """What the DHCP server is told (``pxe.BootBackend.decide``): boot whenever the script
    would do something (``exit`` scripts are not worth a boot file); a NIC's reserved address
    is its address whatever the phase."""
    allow = script_kind(phase, discovery) is not ScriptKind.NONE
    return BootDecision(
        known=phase is not None, allow_boot=allow, hostname=hostname, static_ip=static_ip
    )


@dataclass(frozen=True)
class Candidate:
    """A stored profile reduced to what selection needs."""

    name: str
    requirements: tuple[Requirement, ...]


def pick_profile(
    candidates: Iterable[Candidate], labels: Mapping[str, str], exclude: str | None = None
) -> str | None:
    """The name of the most specific matching profile (``exclude``: the discovery profile)."""
    matching = [
        c for c in candidates if c.name != exclude and matches(c.requirements, dict(labels))
    ]
    if not matching:
        return None
    return min(matching, key=lambda c: (-len(c.requirements), c.name)).name
