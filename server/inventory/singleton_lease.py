"""Database leases: one replica at a time runs a singleton loop (power sync, rollouts), the
others take over when it stops renewing. ``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from server.inventory.db import Database
from server.inventory.machines import as_utc
from server.inventory.models import Lease, utcnow


def acquire(db: Database, name: str, holder: str, ttl: float) -> bool:
    """Take or renew lease ``name`` for ``ttl`` seconds; False when another holder has it."""
    now = utcnow()
    try:
        with db.write() as s:
            row = s.scalar(select(Lease).where(Lease.name == name).with_for_update())
            if row is None:
                s.add(Lease(name=name, holder=holder, expires_at=now + timedelta(seconds=ttl)))
                return True
            if row.holder != holder and as_utc(row.expires_at) > now:
                return False
            row.holder = holder
            row.expires_at = now + timedelta(seconds=ttl)
            return True
    except IntegrityError:
        return False


def release(db: Database, name: str, holder: str) -> None:
    with db.write() as s:
        row = s.get(Lease, name)
        if row is not None and row.holder == holder:
            s.delete(row)
