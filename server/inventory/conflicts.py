"""Which machine already holds a value a write asked for: the 409 for a unique-constraint hit
names the field, the value and the holder (a duplicate MAC says whose it is)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.errors import Conflict
from server.inventory.machines import conflict_from
from server.inventory.models import Machine, Nic


@dataclass(frozen=True)
class Claims:
    """The unique values a machine write asks for (what another machine may already hold)."""

    name: str | None = None
    uuid: str | None = None
    macs: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


def machine_conflict(
    session: Session, exc: IntegrityError, claims: Claims, machine_id: str | None = None
) -> Conflict:
    """The 409 for a machine write that hit a unique constraint, naming the field, the value and
    the machine that holds it (looked up in ``session``, a fresh one: the failed write's
    transaction is gone). Falls back to :func:`conflict_from` when the holder is gone by now."""
    base = conflict_from(exc)
    field = base.details.get("field") if isinstance(base.details, dict) else None
    hit = _holder(session, field, claims, machine_id) if field else None
    if hit is None:
        return base
    value, holder_id, holder_name = hit
    return Conflict(
        message=f"{field} {value} already belongs to machine {holder_name} ({holder_id})",
        details={
            "field": field,
            "value": value,
            "machine": {"id": holder_id, "name": holder_name},
        },
    )


def _holder(
    session: Session, field: str, claims: Claims, machine_id: str | None
) -> tuple[str, str, str] | None:
    """(value, machine id, machine name) of another machine holding one of ``claims``."""
    if field in ("name", "uuid"):
        value = claims.name if field == "name" else claims.uuid
        col = Machine.name if field == "name" else Machine.smbios_uuid
        if value is None:
            return None
        stmt = select(col, Machine.id, Machine.name).where(col == value)
    elif field in ("mac", "ip"):
        values = claims.macs if field == "mac" else claims.ips
        col = Nic.mac if field == "mac" else Nic.ip
        if not values:
            return None
        stmt = (
            select(col, Machine.id, Machine.name)
            .join(Nic, Nic.machine_id == Machine.id)
            .where(col.in_(values))
            .order_by(col)
        )
    else:
        return None
    if machine_id is not None:
        stmt = stmt.where(Machine.id != machine_id)
    row = session.execute(stmt.limit(1)).first()
    return None if row is None else (str(row[0]), row[1], row[2])
