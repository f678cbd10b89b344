"""Importing a rack manifest: many machines in one transaction, idempotently.

A manifest (CSV, YAML or JSON, read by ``bronze machines import``) becomes a list of
:class:`Row` values, each already validated field by field with the rules of
``POST /api/v1/machines`` (``server.api.registration`` does that). This module checks the rows
against each other and against the inventory (:func:`plan`), then writes them (:func:`apply`):

- **Idempotent.** A row names its machine by ``name``. A machine that already says what the row
  says is left alone: no write, no event, no revision bump. Importing the same file twice
  changes nothing. The BMC password is compared with the stored one (decrypted), never
  re-encrypted for nothing.
- **Additive.** A changed row updates its machine, but import never removes: the row's labels
  are set (others kept), its NICs are added or updated (NICs it does not list are kept, e.g. those
  found by inspection), an empty field (UUID, serial, NIC name or IP) keeps the recorded value.
  The phase is only used when a machine is created. Removing is PATCH's job.
- **Per-row errors.** A duplicate name, MAC, reserved IP, UUID or serial inside the file is an
  error on the later row naming the earlier one; a MAC, IP or UUID of another machine is an error
  naming that machine. The caller writes nothing unless every row is valid, or writes the valid
  rows only when asked to (``partial``).
- **Accept rules** (``server.inventory.accept_rules``): a *discovered* machine that holds a row's
  MAC, UUID or serial is not a conflict but the same machine seen earlier on the network: it is
  merged into the imported one (``machine.accepted`` with the rule).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.inventory import accept_rules
from server.inventory import machines as inventory
from server.inventory.accept_rules import AcceptRule, Identity
from server.inventory.machines import NicSpec
from server.inventory.models import Machine, Nic, utcnow
from server.inventory.secretbox import SecretBox
from server.types import EventKind, Phase


@dataclass(frozen=True)
class BmcSpec:
    """A row's BMC, its address already checked against the BMC network/port policy."""

    driver: str
    address: str
    port: int | None
    scheme: str
    username: str | None
    password: str | None = field(repr=False)
    verify_tls: bool
    ca_bundle: str | None


@dataclass(frozen=True)
class Row:
    """One valid manifest row; ``number`` is its place in the file (for messages)."""

    number: int
    name: str
    uuid: str | None
    serial: str | None
    nics: tuple[NicSpec, ...]
    labels: dict[str, str]
    phase: str
    bmc: BmcSpec | None
    hardware: dict[str, Any]


@dataclass(frozen=True)
class RowError:
    """Why one row cannot be imported."""

    row: int
    name: str | None
    field: str | None
    message: str

    def view(self) -> dict[str, Any]:
        return {"row": self.row, "name": self.name, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class Planned:
    """A valid row, the machine it updates (None: create) and discovered machines to merge."""

    row: Row
    target: Machine | None
    merges: tuple[tuple[Machine, AcceptRule], ...] = ()


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)


# --- planning ------------------------------------------------------------------------------------


class _Index:
    """The inventory facts the rows are checked against, read in a few queries."""

    def __init__(self, s: Session, rows: Sequence[Row]) -> None:
        names = {r.name for r in rows}
        macs = {mac for r in rows for mac, _, _ in r.nics}
        ips = {ip for r in rows for _, _, ip in r.nics if ip}
        uuids = {r.uuid for r in rows if r.uuid}
        self.by_name = {
            m.name: m for m in s.scalars(select(Machine).where(Machine.name.in_(names)))
        }
        self.mac_owner = _pairs(s.execute(select(Nic.mac, Nic.machine_id).where(Nic.mac.in_(macs))))
        self.ip_owner = _pairs(s.execute(select(Nic.ip, Nic.machine_id).where(Nic.ip.in_(ips))))
        self.uuid_owner = _pairs(
            s.execute(select(Machine.smbios_uuid, Machine.id).where(Machine.smbios_uuid.in_(uuids)))
        )
        # Discovered machines are few (bounded by BRONZE_BOOT_DISCOVERY_MAX): read them all, so
        # identities their agents reported (JSON) match too.
        self.discovered = list(
            s.scalars(select(Machine).where(Machine.phase == Phase.DISCOVERED.value))
        )
        self.identities = {m.id: accept_rules.identity_of(m) for m in self.discovered}
        owners = set(self.mac_owner.values()) | set(self.ip_owner.values())
        owners |= set(self.uuid_owner.values())
        self.names = _pairs(
            s.execute(select(Machine.id, Machine.name).where(Machine.id.in_(owners)))
        )

    def discovered_matches(self, row: Row) -> list[tuple[Machine, AcceptRule]]:
        ident = Identity(row.serial, row.uuid, frozenset(mac for mac, _, _ in row.nics))
        out = []
        for m in self.discovered:
            rule = accept_rules.rule_between(self.identities[m.id], ident)
            if rule is not None:
                out.append((m, rule))
        return out


def _in_file_duplicates(rows: Sequence[Row]) -> list[RowError]:
    seen: dict[tuple[str, str], int] = {}
    errors: list[RowError] = []
    for r in rows:
        keys = [("name", r.name)]
        keys += [("mac", mac) for mac, _, _ in r.nics]
        keys += [("ip", ip) for _, _, ip in r.nics if ip]
        keys += [(f, v) for f, v in (("uuid", r.uuid), ("serial", r.serial)) if v]
        for what, value in keys:
            first = seen.setdefault((what, value), r.number)
            if first != r.number:
                errors.append(
                    RowError(r.number, r.name, what, f"{what} {value} is also in row {first}")
                )
    return errors


def _row_errors(r: Row, idx: _Index, target: Machine | None) -> list[RowError]:
    mine = target.id if target is not None else None
    discovered = {m.id for m in idx.discovered}
    errors = []

    def other(owner: str | None) -> bool:
        return owner is not None and owner != mine and owner not in discovered

    for mac, _, ip in r.nics:
        if other(idx.mac_owner.get(mac)):
            name = idx.names.get(idx.mac_owner[mac])
            errors.append(RowError(r.number, r.name, "mac", f"MAC {mac} is machine {name}'s"))
        if ip and other(idx.ip_owner.get(ip)):
            name = idx.names.get(idx.ip_owner[ip])
            errors.append(RowError(r.number, r.name, "ip", f"IP {ip} is reserved for {name}"))
    if r.uuid and other(idx.uuid_owner.get(r.uuid)):
        name = idx.names.get(idx.uuid_owner[r.uuid])
        errors.append(RowError(r.number, r.name, "uuid", f"UUID {r.uuid} is machine {name}'s"))
    return errors


def plan(s: Session, rows: Sequence[Row]) -> tuple[list[Planned], list[RowError]]:
    """Check valid rows against each other and the inventory (reads only)."""
    errors = _in_file_duplicates(rows)
    bad = {e.row for e in errors}
    idx = _Index(s, rows)
    planned: list[Planned] = []
    claimed: dict[str, int] = {}  # discovered machine id -> row that merges it
    for r in rows:
        if r.number in bad:
            continue
        target = idx.by_name.get(r.name)
        row_errors = _row_errors(r, idx, target)
        matches = idx.discovered_matches(r)
        if matches and target is not None and target.phase != Phase.REGISTERED.value:
            row_errors.append(
                RowError(
                    r.number,
                    r.name,
                    "name",
                    f"discovered machine {matches[0][0].name} matches this row but {r.name} is "
                    f"{target.phase}: accept or delete the discovered machine first",
                )
            )
        for m, _ in matches:
            if m.id in claimed:
                row_errors.append(
                    RowError(
                        r.number,
                        r.name,
                        None,
                        f"discovered machine {m.name} also matches row {claimed[m.id]}",
                    )
                )
        if row_errors:
            errors.extend(row_errors)
            continue
        for m, _ in matches:
            claimed[m.id] = r.number
        planned.append(Planned(r, target, tuple(matches)))
    return planned, sorted(errors, key=lambda e: e.row)


# --- applying ------------------------------------------------------------------------------------


def apply(s: Session, planned: Sequence[Planned], secrets: SecretBox, actor: str) -> Outcome:
    """Write the planned rows in the caller's transaction."""
    out = Outcome()
    for p in planned:
        detached = [
            (accept_rules.detach(s, m, p.row.name, rule, actor), rule) for m, rule in p.merges
        ]
        if p.target is None:
            m = _create(s, p.row, secrets, actor)
            out.created.append(m.name)
        elif _update(s, p.target, p.row, secrets, actor):
            m = p.target
            out.updated.append(m.name)
        else:
            m = p.target
            out.unchanged.append(m.name)
        for d, rule in detached:
            data = accept_rules.absorb(s, d, m, rule, actor)
            out.accepted.append({"machine": m.name, **data})
    return out


def _bmc_changes(m: Machine, b: BmcSpec, secrets: SecretBox) -> dict[str, Any]:
    """Set the BMC columns that differ from ``b``; what changed (no secret)."""
    changes: dict[str, Any] = {}
    for col, value in (
        ("bmc_driver", b.driver),
        ("bmc_address", b.address),
        ("bmc_port", b.port),
        ("bmc_scheme", b.scheme),
        ("bmc_username", b.username),
        ("bmc_verify_tls", b.verify_tls),
        ("bmc_ca_bundle", b.ca_bundle),
    ):
        if getattr(m, col) != value:
            setattr(m, col, value)
            changes[col.removeprefix("bmc_")] = "(changed)" if col == "bmc_ca_bundle" else value
    if b.password is not None and (
        m.bmc_password_enc is None or secrets.decrypt(m.bmc_password_enc) != b.password
    ):
        m.bmc_password_enc = secrets.encrypt(b.password)
        changes["password"] = "(changed)"  # noqa: S105 - a marker, not a secret
    return changes


def _audit_bmc(s: Session, m: Machine, b: BmcSpec, actor: str) -> None:
    if not b.verify_tls:
        inventory.record(
            s,
            actor=actor,
            kind=EventKind.MACHINE_BMC_TLS_INSECURE,
            machine=m,
            message="BMC TLS verification turned off",
        )
    if b.scheme == "http" and b.driver != "ipmi":
        inventory.record(
            s,
            actor=actor,
            kind=EventKind.MACHINE_BMC_PLAINTEXT,
            machine=m,
            message="BMC reached over plain HTTP: credentials travel unencrypted",
        )


def _create(s: Session, r: Row, secrets: SecretBox, actor: str) -> Machine:
    now = utcnow()
    m = Machine(
        id=str(uuidlib.uuid4()),
        name=r.name,
        smbios_uuid=r.uuid,
        serial=r.serial,
        phase=r.phase,
        power_observed="unknown",
        hardware=r.hardware,
        created_at=now,
        updated_at=now,
        nics=[],
        label_rows=[],
        bmc_verify_tls=True,
        bmc_scheme="https",
    )
    inventory.set_nics(m, list(r.nics))
    inventory.set_labels(m, r.labels)
    if r.bmc is not None:
        _bmc_changes(m, r.bmc, secrets)
    s.add(m)
    s.flush()
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.MACHINE_CREATED,
        machine=m,
        message=f"machine {m.name} created by import (row {r.number})",
        data={
            "macs": [mac for mac, _, _ in r.nics],
            "labels": r.labels,
            "source": accept_rules.IMPORT_SOURCE,
            "row": r.number,
        },
    )
    if r.bmc is not None:
        _audit_bmc(s, m, r.bmc, actor)
    return m


def _nic_changes(m: Machine, r: Row) -> list[str]:
    have = {n.mac: (n.name, n.ip) for n in m.nics}
    wanted = dict(have)
    for mac, name, ip in r.nics:
        old_name, old_ip = have.get(mac, (None, None))
        wanted[mac] = (name if name is not None else old_name, ip if ip is not None else old_ip)
    if wanted == have:
        return []
    inventory.set_nics(m, [(mac, n, ip) for mac, (n, ip) in sorted(wanted.items())])
    return sorted(mac for mac in wanted if wanted[mac] != have.get(mac))


def _update(s: Session, m: Machine, r: Row, secrets: SecretBox, actor: str) -> bool:
    changes: dict[str, Any] = {}
    for attr, col, value in (("uuid", "smbios_uuid", r.uuid), ("serial", "serial", r.serial)):
        if value is not None and getattr(m, col) != value:
            setattr(m, col, value)
            changes[attr] = value
    if r.hardware and m.hardware != r.hardware:
        m.hardware = r.hardware
        changes["hardware"] = "(updated)"
    labels = {**m.labels, **r.labels}
    if labels != m.labels:
        inventory.set_labels(m, labels)
        changes["labels"] = labels
    nics = _nic_changes(m, r)
    if nics:
        changes["nics"] = nics
    if r.bmc is not None:
        bmc = _bmc_changes(m, r.bmc, secrets)
        if bmc:
            changes["bmc"] = bmc
            _audit_bmc(s, m, r.bmc, actor)
    if not changes:
        return False
    m.updated_at = utcnow()
    s.flush()
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.MACHINE_UPDATED,
        machine=m,
        message=f"machine {m.name} updated by import (row {r.number}): "
        + ", ".join(sorted(changes)),
        data={**changes, "source": accept_rules.IMPORT_SOURCE},
    )
    return True


def _pairs(result: Any) -> dict[Any, Any]:
    """Two-column rows as a dict."""
    return {a: b for a, b in result}
