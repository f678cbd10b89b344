"""Inventory operations on a SQLAlchemy session: machines, NICs, labels, and their events
(their pages: ``server.inventory.pages``).

Every change writes an :class:`~server.inventory.models.Event` in the same transaction, so the
audit trail and the inventory can never disagree. Callers (the REST layer, controllers) own the
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.errors import Conflict, NotFound
from server.inventory.models import Event, Machine, MachineLabel, Nic, utcnow
from server.inventory.pages import Page as Page  # re-exported: callers use inventory.*
from server.inventory.pages import list_events as list_events
from server.inventory.pages import list_machines as list_machines
from server.inventory.pages import machine_body as machine_body
from server.inventory.pages import page_body as page_body
from server.inventory.pages import selector_clause as selector_clause
from server.inventory.views import as_utc as as_utc  # re-exported: callers use inventory.*
from server.inventory.views import by_key
from server.inventory.views import iso as iso
from server.inventory.views import machine_view as machine_view
from server.inventory.views import machine_views as machine_views
from server.logs import REQUEST_ID
from server.types import EventKind


def with_request_id(data: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    """``data`` plus the id of the REST request this event happened under (``request_id``),
    when there is one: events and log lines of one request can be found together."""
    rid = request_id or REQUEST_ID.get()
    if rid is None or "request_id" in data:
        return data
    return {**data, "request_id": rid}


def record(
    session: Session,
    *,
    actor: str,
    kind: EventKind,
    message: str,
    machine: Machine | None = None,
    machine_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    ev = Event(
        actor=actor,
        kind=EventKind(kind).value,
        message=message,
        machine_id=machine.id if machine else machine_id,
        machine_name=machine.name if machine else None,
        data=with_request_id(data or {}),
        created_at=utcnow(),
    )
    session.add(ev)
    return ev


def get_machine(session: Session, key: str) -> Machine:
    """Look a machine up by id or by name."""
    m = session.scalar(select(Machine).where(by_key(key)))
    if m is None:
        raise NotFound(kind="machine", key=key)
    return m


def conflict_from(exc: IntegrityError) -> Conflict:
    """Turn a unique-constraint violation into a 409 naming the field, on SQLite and PostgreSQL."""
    text = str(exc.orig).lower()
    for needle, field in (
        ("nics.mac", "mac"),
        ("nics.ip", "ip"),
        ("uq_nics_ip", "ip"),
        ("uq_nics_mac", "mac"),
        ("machines.name", "name"),
        ("uq_machines_name", "name"),
        ("smbios_uuid", "uuid"),
        ("api_tokens.name", "name"),
        ("uq_api_tokens_name", "name"),
    ):
        if needle in text:
            return Conflict(
                message=f"a record with this {field} already exists", details={"field": field}
            )
    return Conflict(message="conflicting record exists")


def set_labels(machine: Machine, labels: dict[str, str]) -> None:
    current = {row.key: row for row in machine.label_rows}
    for key in list(current):
        if key not in labels:
            machine.label_rows.remove(current[key])
    for key, value in labels.items():
        if key in current:
            current[key].value = value
        else:
            machine.label_rows.append(MachineLabel(key=key, value=value))


NicSpec = tuple[str, str | None, str | None]
"""(mac, name, reserved IPv4 address)"""


def set_nics(machine: Machine, nics: Sequence[NicSpec]) -> None:
    wanted = {mac: (name, ip) for mac, name, ip in nics}
    for nic in list(machine.nics):
        if nic.mac not in wanted:
            machine.nics.remove(nic)
    have = {nic.mac: nic for nic in machine.nics}
    for mac, (name, ip) in wanted.items():
        if mac in have:
            have[mac].name, have[mac].ip = name, ip
        else:
            machine.nics.append(Nic(mac=mac, name=name, ip=ip))
