"""What one ``GET /boot.ipxe`` does, decided by a pure function (``plan_script``).

``BootPlane.script`` (``server.boot.service``) is a thin shell around this module: it reads the
machine, the profiles and what DHCP told the boot plane about the MAC, runs discovery when
``needs_discovery`` says so, calls ``plan_script`` and then carries the plan out (issue the
token, render, write the timeline events). Every decision sits here and is table-tested
(``tests/server/boot/test_boot_plan.py``):

* which script: ``server.boot.decide.script_kind`` by phase, the discovery profile or the most
  specific matching profile, ``exit`` when the profile it needs is missing;
* whether an enrollment token is handed out and to what it is bound (``token_binding``): only
  to the address DHCP gave that MAC (the lease the boot plane recorded, else the NIC's reserved
  address) and to one boot (the DHCP transaction, ``boot=`` in the script URL). A request from
  another address, or naming another boot, gets the script without a token;
* which timeline events to write (``DISCOVERED``, ``SCRIPT`` with its detail).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pxe import BootAction
from server.boot.decide import Candidate, ScriptKind, action_of, pick_profile, script_kind
from server.boot.timeline import HttpKind
from server.types import Phase

BOOT_ID_RE = re.compile(r"^[0-9a-f]{1,16}$")
RESERVED_BOOT = "reserved"
"""The boot reference when DHCP told us nothing but the NIC has a reserved address."""


@dataclass(frozen=True)
class MachineView:
    """The machine that asked, as the plan needs it."""

    id: str
    name: str
    phase: Phase
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None
    """The NIC's reserved address (``nics.ip``)."""
    netboot: bool = False
    """Diskless (``boot_from = network``): it boots its profile in every phase."""
    image: str | None = None
    """Its own image: for a diskless machine the one a netboot upgrade is trying, else its last
    good (``machines.trial_image`` or ``machines.image``), which replaces the profile's; for a
    disk machine the image installed on its disk."""


@dataclass(frozen=True)
class ProfileView:
    """A stored profile as the plan needs it."""

    name: str
    agent: bool
    uses_token: bool
    image: str | None = None


@dataclass(frozen=True)
class ScriptQuery:
    """The request: validated MAC, UUID, arch, the client address and the boot reference."""

    mac: str
    client_ip: str | None = None
    arch: str | None = None
    boot: str | None = None
    """``boot=`` from the script URL: the DHCP transaction that handed this URL out."""


@dataclass(frozen=True)
class SeenLease:
    """What the DHCP server told the boot plane about a MAC's latest boot (its ACK)."""

    boot: str
    address: str | None
    """The address DHCP gave (full mode); None in proxy mode (the site's DHCP server gave it)."""


class NoToken(StrEnum):
    """Why a script that would carry an enrollment token carries none."""

    NO_KNOWN_ADDRESS = "token_no_known_address"
    """Neither a DHCP lease nor a reserved address is known for the MAC."""
    ADDRESS_MISMATCH = "token_address_mismatch"
    """The request came from another address than the one DHCP gave the MAC."""
    BOOT_MISMATCH = "token_boot_mismatch"
    """The request names another boot than the DHCP transaction recorded for the MAC."""


@dataclass(frozen=True)
class TokenBinding:
    """Issue (or hand out again) the token of boot ``boot``, redeemable only from ``address``."""

    boot: str
    address: str


@dataclass(frozen=True)
class PlannedEvent:
    kind: HttpKind
    detail: Mapping[str, object]


@dataclass(frozen=True)
class ScriptPlan:
    kind: ScriptKind
    action: BootAction
    profile: str | None
    token: TokenBinding | None
    agent_args: bool
    """Append ``bronze.machine= bronze.token= bronze.server= bronze.enroll=``."""
    events: tuple[PlannedEvent, ...]
    wait_for_boot: bool = False
    """No token only because DHCP has not reported the boot the URL names (yet): the shell may
    wait briefly for that report and plan again."""
    image: str | None = None
    """The OS image the script boots (the machine's own when diskless, else the profile's);
    None: the profile's own kernel and initrds."""


def needs_discovery(machine: MachineView | None, discovery: bool) -> bool:
    """An unknown MAC with discovery on is recorded before its script is planned."""
    return machine is None and script_kind(None, discovery) is ScriptKind.DISCOVERY


def token_binding(
    query: ScriptQuery, lease: SeenLease | None, reserved_ip: str | None
) -> TokenBinding | NoToken:
    """To which boot and address a token may be handed, or why none may be."""
    if lease is not None:
        if query.boot is not None and query.boot != lease.boot:
            return NoToken.BOOT_MISMATCH
        address, boot = lease.address or reserved_ip, lease.boot
    else:
        address, boot = reserved_ip, query.boot or RESERVED_BOOT
    if address is None:
        return NoToken.NO_KNOWN_ADDRESS
    if query.client_ip != address:
        return NoToken.ADDRESS_MISMATCH
    return TokenBinding(boot, address)


def _choose(
    kind: ScriptKind,
    machine: MachineView | None,
    profiles: Sequence[ProfileView],
    candidates: Sequence[Candidate],
    discovery_profile: str,
) -> tuple[ProfileView | None, str | None]:
    by_name = {p.name: p for p in profiles}
    if kind is ScriptKind.DISCOVERY:
        return by_name.get(discovery_profile), None
    if kind is ScriptKind.PROFILE and machine is not None:
        chosen = pick_profile(candidates, machine.labels, exclude=discovery_profile)
        found = by_name.get(chosen) if chosen else None
        return found, None if found else "no_profile_matches"
    return None, None


def plan_script(
    query: ScriptQuery,
    machine: MachineView | None,
    discovery: bool,
    outcome: str | None,
    profiles: Sequence[ProfileView],
    candidates: Sequence[Candidate],
    *,
    discovery_profile: str,
    enrollment_phases: frozenset[Phase],
    lease: SeenLease | None = None,
) -> ScriptPlan:
    """The whole decision for one script request. ``outcome``: what discovery said when it ran
    (``discovered``, ``known``: another request created the machine meanwhile, or a limit:
    ``discovery_rate_limited`` / ``discovery_limit_reached``), None when it did not run."""
    events: list[PlannedEvent] = []
    kind = script_kind(
        machine.phase if machine else None,
        discovery,
        machine is not None and machine.netboot,
        machine is not None and machine.image is not None,
    )
    if outcome == "discovered" and machine is not None:
        events.append(PlannedEvent(HttpKind.DISCOVERED, {"machine": machine.name}))
    elif outcome is not None and machine is None:
        kind = ScriptKind.NONE
    reason = outcome if outcome not in (None, "known", "discovered") else None
    profile, why = _choose(kind, machine, profiles, candidates, discovery_profile)
    reason = why or reason
    if kind in (ScriptKind.DISCOVERY, ScriptKind.PROFILE) and profile is None:
        kind = ScriptKind.NONE
    token: TokenBinding | None = None
    wait = False
    wants_token = profile is not None and (profile.agent or profile.uses_token)
    if wants_token and machine is not None and machine.phase in enrollment_phases:
        bound = token_binding(query, lease, machine.ip)
        if isinstance(bound, NoToken):
            reason = reason or bound.value
            wait = query.boot is not None and (lease is None or lease.boot != query.boot)
        else:
            token = bound
    action = action_of(kind)
    image = served_image(machine, profile) if kind is not ScriptKind.NONE else None
    detail: dict[str, object] = {"action": action.value, "arch": query.arch}
    if profile is not None:
        detail["profile"] = profile.name
    if image is not None:
        detail["image"] = image
    if machine is not None:
        detail["phase"] = machine.phase.value
        detail["machine"] = machine.name
    if token is not None:
        detail["boot"] = token.boot
    if reason:
        detail["reason"] = reason
    events.append(PlannedEvent(HttpKind.SCRIPT, detail))
    return ScriptPlan(
        kind=kind,
        action=action,
        profile=profile.name if profile else None,
        token=token,
        agent_args=token is not None and profile is not None and profile.agent,
        events=tuple(events),
        wait_for_boot=wait,
        image=image,
    )


def served_image(machine: MachineView | None, profile: ProfileView | None) -> str | None:
    """A diskless machine boots its own image (the trial one while a netboot upgrade tries it,
    else its last good); any other machine, or one without its own, the profile's."""
    if profile is None:
        return None
    if machine is not None and machine.netboot and machine.image:
        return machine.image
    return profile.image
