"""Replica liveness: which server replicas are alive right now.

Every replica holds a lease ``replica:<id>`` in the ``leases`` table and renews it every third of
its TTL. A replica that dies stops renewing; once its lease has lapsed the others know it is gone
and take over what it held. What it held is the caller's business: power operations
(``operations.replica``, see :mod:`server.power.operations`) today, agent-session claims later.
That is why this lives in the inventory (next to the lease primitive it builds on) and not in the
power plane: it knows nothing of what a replica holds, only whether it is alive.

A replica that stops cleanly releases its lease at once (:meth:`ReplicaLiveness.release`), so its
peers need not wait for the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server.inventory import singleton_lease
from server.inventory.db import Database
from server.inventory.models import Lease

log = logging.getLogger(__name__)

PREFIX = "replica:"
TTL = 30.0
"""Seconds a replica's liveness lease lasts; it is renewed every third of that."""


def live_replicas(now: datetime) -> Select[Any]:
    """A subquery of the ids of the replicas whose lease has not lapsed at ``now``."""
    return select(Lease.holder).where(Lease.name.like(PREFIX + "%"), Lease.expires_at > now)


def forget_lapsed(s: Session, now: datetime) -> None:
    """Delete the lapsed liveness leases (call once what they held has been taken over)."""
    s.execute(delete(Lease).where(Lease.name.like(PREFIX + "%"), Lease.expires_at <= now))


class ReplicaLiveness:
    """This replica's liveness lease, renewed in the background; after each renewal the
    ``on_tick`` callbacks run (in a thread), e.g. to take over what dead replicas held."""

    def __init__(self, db: Database, replica: str | None = None, ttl: float = TTL) -> None:
        self.db = db
        self.replica = replica or uuid.uuid4().hex[:16]
        self.ttl = ttl
        self.on_tick: list[Callable[[], object]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def lease_name(self) -> str:
        return PREFIX + self.replica

    def renew(self) -> None:
        singleton_lease.acquire(self.db, self.lease_name, self.replica, self.ttl)

    def tick(self) -> None:
        self.renew()
        for fn in self.on_tick:
            fn()

    async def start(self) -> None:
        """Renew once (before this replica accepts work that names it), run the callbacks, then
        keep renewing in the background."""
        await run_in_threadpool(self.tick)
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await run_in_threadpool(self.tick)
            except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
                log.exception("replica liveness renewal failed replica=%s", self.replica)

    async def stop_renewing(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def release(self) -> None:
        """Release the lease: peers see this replica gone at once (call once what it held was
        given up, so no peer takes over work still running here)."""
        await self.stop_renewing()
        await run_in_threadpool(singleton_lease.release, self.db, self.lease_name, self.replica)
