"""Accepting discovered machines: by an operator's command, or by rule when one was imported.

The boot plane records a MAC it does not know as a machine in phase ``discovered``
(``server.boot.service``). An operator turns it into a real machine with
``POST /api/v1/machines/{id}/accept`` (:func:`accept`): a new name, labels, phase ``registered``.

When the rack was imported first (``bronze machines import``), no command is needed: a discovered
machine whose **serial**, **SMBIOS UUID** or **MAC** equals that of an *imported* machine (phase
``registered``, created by an import) is merged into the imported one (:func:`merge`): the
imported record keeps its id, name, labels and BMC and gains what only discovery knew (NICs,
SMBIOS UUID, serial, hardware facts); the discovered record is deleted; an event
``machine.accepted`` names the rule that matched (:class:`AcceptRule`). Rules are tried in the
order serial, UUID, MAC, like Ironic's inspection rules match nodes by BMC-reported identity.

The rule runs (:func:`find_imported`) when a machine is discovered (the boot plane, with the MAC
and the UUID DHCP option 97 carried) and when an import lands (``server.inventory.manifest_import``
looks for discovered machines matching each row). A machine created by ``POST /api/v1/machines``
is never a merge target: only an import declares "this identity is expected here".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from server.errors import Conflict
from server.inventory import machines as inventory
from server.inventory.models import Event, Machine, Nic, utcnow
from server.types import EventKind, Phase

IMPORT_SOURCE = "import"
"""``data.source`` of the ``machine.created`` event an import writes: marks an imported machine."""


class AcceptRule(StrEnum):
    """Which identity tied a discovered machine to an imported one."""

    SERIAL = "serial"
    """The system serial number (SMBIOS type 1, or the BMC's) is the same."""
    UUID = "uuid"
    """The SMBIOS system UUID (DHCP option 97, the agent, or the BMC) is the same."""
    MAC = "mac"
    """One of the discovered machine's MACs is listed for the imported machine."""
    COMMAND = "command"
    """An operator accepted it (``bronze machines accept``)."""


@dataclass(frozen=True)
class Identity:
    """What identifies a physical machine, however it was learnt."""

    serial: str | None
    uuid: str | None
    macs: frozenset[str]


def identity_of(m: Machine) -> Identity:
    """A machine's identity from its columns, its NICs and what its agent reported."""
    smbios = m.hardware.get("smbios") if isinstance(m.hardware, dict) else None
    smbios = smbios if isinstance(smbios, dict) else {}
    macs = {n.mac for n in m.nics}
    for nic in (m.hardware or {}).get("nics") or ():
        if isinstance(nic, dict) and isinstance(nic.get("mac"), str):
            macs.add(nic["mac"].lower())
    serial = m.serial or (smbios.get("serial") or None)
    uuid = m.smbios_uuid or (str(smbios["uuid"]).lower() if smbios.get("uuid") else None)
    return Identity(serial, uuid, frozenset(macs))


def rule_between(discovered: Identity, imported: Identity) -> AcceptRule | None:
    """The first rule that ties the two identities, or None (pure)."""
    if discovered.serial and discovered.serial == imported.serial:
        return AcceptRule.SERIAL
    if discovered.uuid and discovered.uuid == imported.uuid:
        return AcceptRule.UUID
    if discovered.macs & imported.macs:
        return AcceptRule.MAC
    return None


def imported_ids(s: Session, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` were created by an import."""
    ids = list(ids)
    if not ids:
        return set()
    rows = s.execute(
        select(Event.machine_id, Event.data).where(
            Event.machine_id.in_(ids), Event.kind == "machine.created"
        )
    )
    return {mid for mid, data in rows if (data or {}).get("source") == IMPORT_SOURCE}


def find_imported(
    s: Session, ident: Identity, exclude: str | None = None
) -> tuple[Machine, AcceptRule] | None:
    """The imported, still ``registered`` machine that ``ident`` belongs to, with the rule."""
    clauses = []
    if ident.serial:
        clauses.append(Machine.serial == ident.serial)
    if ident.uuid:
        clauses.append(Machine.smbios_uuid == ident.uuid)
    if ident.macs:
        clauses.append(Machine.id.in_(select(Nic.machine_id).where(Nic.mac.in_(ident.macs))))
    if not clauses:
        return None
    found = [
        m
        for m in s.scalars(
            select(Machine).where(or_(*clauses), Machine.phase == Phase.REGISTERED.value)
        )
        if m.id != exclude
    ]
    imported = imported_ids(s, [m.id for m in found])
    best: tuple[Machine, AcceptRule] | None = None
    order = list(AcceptRule)
    for m in sorted(found, key=lambda m: m.name):
        if m.id not in imported:
            continue
        rule = rule_between(ident, identity_of(m))
        if rule is not None and (best is None or order.index(rule) < order.index(best[1])):
            best = (m, rule)
    return best


@dataclass(frozen=True)
class Detached:
    """What a deleted discovered record knew, to be given to the machine it is merged into."""

    id: str
    name: str
    identity: Identity
    hardware: dict[str, Any]
    nic_macs: tuple[str, ...]
    """Its NIC rows (the identity may also hold MACs only its agent reported)."""


def detach(
    s: Session, discovered: Machine, into_name: str, rule: AcceptRule, actor: str
) -> Detached:
    """Delete a discovered record (flushed: its MACs and UUID are free again), keeping what it
    knew for :func:`absorb`."""
    out = Detached(
        discovered.id,
        discovered.name,
        identity_of(discovered),
        dict(discovered.hardware or {}),
        tuple(n.mac for n in discovered.nics),
    )
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.MACHINE_DELETED,
        machine=discovered,
        message=f"discovered machine {out.name} merged into {into_name} (rule {rule.value})",
        data={"macs": sorted(out.identity.macs), "merged_into": into_name},
    )
    s.delete(discovered)
    s.flush()
    return out


def absorb(s: Session, d: Detached, into: Machine, rule: AcceptRule, actor: str) -> dict[str, Any]:
    """Give ``into`` what only the discovered record knew; record ``machine.accepted``."""
    known = {n.mac for n in into.nics}
    extra = sorted(m for m in d.nic_macs if m not in known)
    gained: dict[str, Any] = {}
    if extra:
        specs = [(n.mac, n.name, n.ip) for n in into.nics] + [(m, None, None) for m in extra]
        inventory.set_nics(into, specs)
        gained["nics"] = extra
    if into.smbios_uuid is None and d.identity.uuid:
        into.smbios_uuid = gained["uuid"] = d.identity.uuid
    if into.serial is None and d.identity.serial:
        into.serial = gained["serial"] = d.identity.serial
    if d.hardware and not into.hardware:
        into.hardware = d.hardware
        gained["hardware"] = "(from discovery)"
    into.updated_at = utcnow()
    s.flush()
    data = {"rule": rule.value, "discovered": d.name, "discovered_id": d.id, "gained": gained}
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.MACHINE_ACCEPTED,
        machine=into,
        message=f"discovered machine {d.name} accepted as {into.name} (rule {rule.value})",
        data=data,
    )
    return data


def merge(
    s: Session, discovered: Machine, into: Machine, rule: AcceptRule, actor: str
) -> dict[str, Any]:
    """Fold ``discovered`` into ``into`` (see the module doc) and delete it. Returns the
    ``machine.accepted`` event data. The caller owns the transaction."""
    return absorb(s, detach(s, discovered, into.name, rule, actor), into, rule, actor)


def accept(
    s: Session, m: Machine, name: str | None, labels: dict[str, str], actor: str
) -> dict[str, Any]:
    """An operator accepts a discovered machine: rename, add labels, phase ``registered``."""
    if m.phase != Phase.DISCOVERED.value:
        raise Conflict(
            message=f"machine {m.name} is {m.phase}, not discovered: nothing to accept",
            details={"phase": m.phase},
        )
    old = m.name
    if name is not None and name != m.name:
        m.name = name
    merged = {**m.labels, **labels}
    if merged != m.labels:
        inventory.set_labels(m, merged)
    m.phase = Phase.REGISTERED.value
    m.updated_at = utcnow()
    s.flush()
    data = {"rule": AcceptRule.COMMAND.value, "from": old, "name": m.name, "labels": labels}
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.MACHINE_ACCEPTED,
        machine=m,
        message=f"discovered machine {old} accepted as {m.name}",
        data=data,
    )
    return data


def on_discovered(s: Session, discovered: Machine, actor: str) -> Machine | None:
    """The rule, run right after a machine is discovered: the imported machine it was merged
    into, or None when no imported machine matches."""
    found = find_imported(s, identity_of(discovered), exclude=discovered.id)
    if found is None:
        return None
    into, rule = found
    merge(s, discovered, into, rule, actor)
    return into


def adopt_mac(s: Session, mac: str, smbios_uuid: str | None, actor: str) -> Machine | None:
    """The rule at the moment of discovery, before a record is written: an unknown MAC whose
    SMBIOS UUID (DHCP option 97) is an imported machine's becomes that machine's NIC at once
    (no ``discovered`` record in between). Returns the machine, or None."""
    found = find_imported(s, Identity(None, smbios_uuid, frozenset()))
    if found is None:
        return None
    into, rule = found
    inventory.set_nics(into, [(n.mac, n.name, n.ip) for n in into.nics] + [(mac, None, None)])
    into.updated_at = utcnow()
    s.flush()
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.MACHINE_ACCEPTED,
        machine=into,
        message=f"MAC {mac} discovered and accepted as {into.name} (rule {rule.value})",
        data={"rule": rule.value, "discovered": None, "gained": {"nics": [mac]}},
    )
    return into
