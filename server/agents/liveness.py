"""Liveness bookkeeping: heartbeats, last-seen times, stale sessions, the disconnect save.

Every message from an agent refreshes its session's ``last_seen`` (event-loop time). Heartbeats
also note a wall-clock time per machine; those are written in one batched statement every
``seen_flush_interval`` seconds (:meth:`Liveness.flush_seen`), not one write per heartbeat. The
sweep closes a session silent for three heartbeat intervals (a machine that lost power sends no
FIN; gRPC keepalives catch that too, but later). When a session ends, its disconnect is saved in
a task of its own (:meth:`Liveness.record_disconnected`): gRPC cancels a finished RPC's task, and
a write cut off there would leave the machine "connected" in the database for good.

The sweep also closes sessions whose certificate was revoked meanwhile, on any replica
(:meth:`Liveness.revoked`).

The config version an agent reports (Hello, heartbeat, command result) is noted here too and
written only when it changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format

from agent.gen import agent_pb2 as pb
from server.agents.registry import AgentSession
from server.agents.store import AgentHello, AgentStore
from server.inventory.machines import as_utc
from server.inventory.models import utcnow

log = logging.getLogger(__name__)

SEEN_FLUSH_INTERVAL = 5.0
"""Seconds between writes of the sessions' last-seen times (one batched statement)."""


def stale_sessions(
    sessions: Sequence[AgentSession], now: float, heartbeat_interval: float
) -> list[AgentSession]:
    """The sessions silent for more than three heartbeat intervals at loop time ``now``."""
    limit = now - 3 * heartbeat_interval
    return [s for s in sessions if s.last_seen < limit]


class Liveness:
    """Last-seen times waiting to be written, applied versions, disconnect saves in flight."""

    def __init__(self, store: AgentStore, now: Callable[[], dt.datetime]) -> None:
        self._store = store
        self._now = now
        self._seen: dict[str, dt.datetime] = {}
        self._applied: dict[str, str] = {}
        self._bookkeeping: set[asyncio.Task[None]] = set()

    async def hello(self, session: AgentSession, hello: pb.Hello) -> None:
        """Record what the agent says in its Hello (inventory, versions, boot)."""
        mid = session.machine_id
        inventory: dict[str, Any] = json_format.MessageToDict(
            hello.inventory, preserving_proto_field_name=True
        )
        await self._store.record_hello(
            mid,
            AgentHello(
                hello.agent_version,
                hello.boot_id,
                hello.config_version,
                hello.staged_config_version,
                inventory,
                self._now(),
                hello.image_digest,
                hello.slot,
                hello.last_good_digest,
            ),
        )
        # record_hello wrote what the agent says is in effect, also "" (a machine booted afresh:
        # a netboot keeps its config in RAM): the cache must say the same, or the same version
        # applied again after the reboot is taken as already written and never recorded.
        self._applied[mid] = hello.config_version
        log.info(
            "session open machine=%s peer=%s boot=%s config=%s",
            mid,
            session.peer,
            hello.boot_id,
            hello.config_version or "-",
        )

    def heard(self, session: AgentSession) -> None:
        """Any message from the agent: the session is alive."""
        session.last_seen = asyncio.get_running_loop().time()

    def heartbeat(self, machine_id: str) -> None:
        self._seen[machine_id] = self._now()

    def applied_version(self, machine_id: str) -> str | None:
        return self._applied.get(machine_id)

    async def note_applied(self, machine_id: str, version: str) -> None:
        """The agent says ``version`` is in effect: write it when it changed."""
        if version and self._applied.get(machine_id) != version:
            self._applied[machine_id] = version
            await self._store.record_applied_config(machine_id, version)

    async def revoked(self, sessions: Sequence[AgentSession]) -> list[AgentSession]:
        """The sessions whose certificate the store no longer accepts (revoked, replaced by a
        new enrollment, machine deleted: :mod:`server.agents.revocation`).

        Only sessions not yet checked at the store's current certificates generation are
        looked up: while nothing was revoked anywhere, that is just the sessions opened since
        the last sweep (their admission checked them, but maybe before a revocation)."""
        gen = await self._store.certificates_generation()
        held = [
            s
            for s in sessions
            if s.cert_serial is not None and (gen is None or s.cert_checked != gen)
        ]
        if not held:
            return []
        accepted = await self._store.accepted_certificates([s.machine_id for s in held])
        out = []
        for s in held:
            if s.cert_serial in accepted.get(s.machine_id, ()):
                s.cert_checked = gen
            else:
                out.append(s)
        return out

    async def flush_seen(self) -> None:
        if self._seen:
            batch, self._seen = self._seen, {}
            await self._store.record_seen(batch)

    async def record_disconnected(self, machine_id: str) -> None:
        """Save that the session ended, even if gRPC cancels the stream's task meanwhile.

        The write runs in a task of its own that the cancellation does not reach;
        :meth:`drain` waits for it."""
        task = asyncio.get_running_loop().create_task(
            self._store.record_disconnected(machine_id, self._now())
        )
        self._bookkeeping.add(task)
        task.add_done_callback(functools.partial(self._bookkeeping_done, machine_id))
        # asyncio.wait neither cancels the task when we are cancelled nor raises its error
        # (logged by _bookkeeping_done: bookkeeping must never mask the stream's end).
        await asyncio.wait({task})

    def _bookkeeping_done(self, machine_id: str, task: asyncio.Task[None]) -> None:
        self._bookkeeping.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "record_disconnected failed machine=%s", machine_id, exc_info=task.exception()
            )

    async def drain(self) -> None:
        """Write what is waiting: last-seen times and disconnects being saved."""
        await self.flush_seen()
        await asyncio.gather(*self._bookkeeping, return_exceptions=True)


def session_claimed(
    connected: bool | None,
    last_seen: dt.datetime | None,
    heartbeat_interval: float,
    now: dt.datetime | None = None,
) -> bool:
    """Whether the database (an agent state's ``connected`` and ``last_seen``) says some replica
    holds the agent's session now.

    A replica that dies cannot clear its ``connected`` flag, so the claim holds only while the
    session's heartbeats keep reaching the database: a live session's ``last_seen`` is at most
    one heartbeat plus one flush old; after three heartbeats and a flush the session is gone
    (the hub closes a session silent that long)."""
    if not connected or last_seen is None:
        return False
    limit = dt.timedelta(seconds=3 * heartbeat_interval + SEEN_FLUSH_INTERVAL)
    return as_utc(last_seen) >= (now or utcnow()) - limit
