"""The session registry: which agent streams this server replica holds, one per machine.

A machine has at most one session here. A new session for a machine replaces the old one (the
agent reconnected before the old stream noticed it was dead); the old one is closed. Closing a
session puts ``None`` in its outbox (the stream's writer returns, gRPC ends the RPC) and cancels
its reader. Who holds a session on *another* replica is the database's business
(:func:`server.agents.liveness.session_claimed`), not this registry's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from agent.gen import agent_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AgentSession:
    """One authenticated stream: its outbox (what the server sends) and what the agent said."""

    machine_id: str
    peer: str
    cert_serial: int | None = None
    """Serial of the client certificate that opened the stream (None: not known)."""
    outbox: asyncio.Queue[pb.ServerMessage | None] = field(default_factory=asyncio.Queue)
    boot_id: str = ""
    config_version: str = ""
    last_seen: float = 0.0
    """Event-loop time of the last message from the agent."""
    reader: asyncio.Task[None] | None = None
    cert_checked: int | None = None
    """The store's certificates generation at which the sweep last found the certificate
    still accepted (None: not checked by a sweep yet)."""

    def send(self, msg: pb.ServerMessage) -> None:
        self.outbox.put_nowait(msg)

    def close(self) -> None:
        """End the stream: the writer stops at the marker, the reader is cancelled."""
        self.outbox.put_nowait(None)
        if self.reader is not None:
            self.reader.cancel()


class SessionRegistry:
    """Connected sessions by machine id, and waiters for a machine to connect."""

    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}
        self._connected_event: dict[str, asyncio.Event] = {}

    def get(self, machine_id: str) -> AgentSession | None:
        return self._sessions.get(machine_id)

    def __contains__(self, machine_id: object) -> bool:
        return machine_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def machines(self) -> list[str]:
        return sorted(self._sessions)

    def held(self) -> set[str]:
        """The machines with a session here, unsorted (the once-a-second poll asks)."""
        return set(self._sessions)

    def sessions(self) -> list[AgentSession]:
        return list(self._sessions.values())

    def add(self, session: AgentSession) -> None:
        """Make ``session`` the machine's session, closing the one it replaces."""
        mid = session.machine_id
        old = self._sessions.get(mid)
        if old is not None:
            log.info("session replaced machine=%s old_peer=%s", mid, old.peer)
            old.close()
        self._sessions[mid] = session
        ev = self._connected_event.pop(mid, None)
        if ev:
            ev.set()

    def remove(self, session: AgentSession) -> bool:
        """Forget ``session`` if it is still its machine's session (True then)."""
        if self._sessions.get(session.machine_id) is session:
            del self._sessions[session.machine_id]
            return True
        return False

    def close(self, machine_id: str) -> bool:
        """Close the machine's session if there is one (True then)."""
        session = self._sessions.get(machine_id)
        if session is None:
            return False
        session.close()
        return True

    def close_all(self) -> None:
        for s in list(self._sessions.values()):
            s.close()

    async def wait_connected(self, machine_id: str, timeout: float) -> None:
        if machine_id in self._sessions:
            return
        ev = self._connected_event.setdefault(machine_id, asyncio.Event())
        await asyncio.wait_for(ev.wait(), timeout)
