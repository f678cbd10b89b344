"""A machine as the API shows it, read in one query: the machine's columns plus its NICs and
labels aggregated into JSON by the database (reads at fleet scale: ``docs/performance.md``).
:func:`view` is the one serializer of reads and writes; ``tests/server/inventory/
test_machine_views.py`` holds it byte for byte to a plain ORM reading on both databases."""

from __future__ import annotations

import functools
import json
import uuid as uuidlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

from server.errors import NotFound
from server.inventory.models import Machine, MachineLabel, Nic


def by_key(key: str) -> ColumnElement[bool]:
    """A machine is named by its id or its name."""
    try:
        uuidlib.UUID(key)
    except ValueError:
        return Machine.name == key
    return or_(Machine.id == key, Machine.name == key)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def machine_views(session: Session, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The API representation of machines, in the order of ``ids``."""
    if not ids:
        return []
    rows = session.execute(select(*view_columns(session)).where(Machine.id.in_(ids))).all()
    by_id = {r.id: r for r in rows}
    return [view(by_id[i]) for i in ids if i in by_id]


def view_columns(session: Session) -> tuple[Any, ...]:
    return view_columns_of(session.get_bind().dialect.name)


@functools.cache
def view_columns_of(dialect: str) -> tuple[Any, ...]:
    """What a machine's view is made of, as the columns of one query: the machine's own columns
    and its NICs and labels, each aggregated by the database into one JSON array (SQLite's
    ``json_group_array``, PostgreSQL's ``json_agg``) in the order the API shows them.

    One statement per page instead of three (machines, NICs, labels): the NIC and label rows
    of a page are never sent to Python as rows, and no ``IN`` list of 100 ids is expanded,
    compiled and bound. Python parses two short JSON strings per machine (C code) and builds
    the view with :func:`view`, the one serializer of reads and writes."""

    def agg(*cols: Any) -> Any:  # a JSON array of arrays, in the order of the first column
        if dialect == "postgresql":
            return func.json_agg(aggregate_order_by(func.json_build_array(*cols), cols[0]))
        return func.json_group_array(func.json_array(*cols))  # rows come in the subquery's order

    n = (
        select(Nic.mac, Nic.name, Nic.ip)
        .where(Nic.machine_id == Machine.id)
        .order_by(Nic.mac)
        .correlate(Machine)
        .subquery()
    )
    lab = (
        select(MachineLabel.key, MachineLabel.value)
        .where(MachineLabel.machine_id == Machine.id)
        .order_by(MachineLabel.key)
        .correlate(Machine)
        .subquery()
    )
    return (
        *(c for c in Machine.__table__.c if c.name != "list_view"),  # the view, not its cache
        select(agg(n.c.mac, n.c.name, n.c.ip)).scalar_subquery().label("nics_json"),
        select(agg(lab.c.key, lab.c.value)).scalar_subquery().label("labels_json"),
    )


def iso(value: datetime | None) -> str | None:
    """An instant as the API writes it everywhere: ISO 8601 in UTC with ``Z`` (pydantic's way)."""
    return None if value is None else as_utc(value).isoformat().replace("+00:00", "Z")


def _parts(value: Any) -> list[Any]:
    """An aggregated JSON array: text from SQLite, already parsed by psycopg, NULL when empty
    on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value or []


def view(r: Any) -> dict[str, Any]:
    nics = [{"mac": mac, "name": name, "ip": ip} for mac, name, ip in _parts(r.nics_json)]
    labels = dict(_parts(r.labels_json))
    return {
        "id": r.id,
        "name": r.name,
        "uuid": r.smbios_uuid,
        "serial": r.serial,
        "nics": nics,
        "labels": labels,
        "phase": r.phase,
        "power": {
            "last_request": r.power_request,
            "observed": r.power_observed,
            "observed_at": iso(r.power_observed_at),
            "error": r.power_error,
        },
        "fault_reason": r.fault_reason,
        "image": r.image,
        "boot_from": r.boot_from,
        "trial_image": r.trial_image,
        "bmc": None
        if r.bmc_address is None
        else {
            "driver": r.bmc_driver,
            "scheme": None if r.bmc_driver == "ipmi" else r.bmc_scheme,
            "address": r.bmc_address,
            "port": r.bmc_port,
            "username": r.bmc_username,
            "has_password": r.bmc_password_enc is not None,
            "verify_tls": r.bmc_verify_tls,
            "has_ca_bundle": r.bmc_ca_bundle is not None,
        },
        "hardware": r.hardware,
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
        "revision": r.revision,
    }


def machine_view(session: Session, key: str) -> dict[str, Any]:
    """One machine's API representation, by id or name."""
    row = session.execute(select(*view_columns(session)).where(by_key(key))).first()
    if row is None:
        raise NotFound(kind="machine", key=key)
    return view(row)
