"""The session hub: the facade over a replica's agent sessions and the commands for them.

One :class:`SessionHub` per server process. The session service hands it each authenticated
stream (:meth:`SessionHub.run_session`); the REST layer and controllers call
:meth:`push_config`, :meth:`reboot`, :meth:`confirm_config`, :meth:`node_op`. The work is done by
four parts, each owning its own state:

* :mod:`.registry` — :class:`SessionRegistry`: the connected sessions, one per machine.
* :mod:`.ledger`   — :class:`CommandLedger`: persist -> send -> acknowledge, waiters,
  superseding of older ``ApplyConfig``, and the cross-replica poll (pure decision functions).
* :mod:`.relay`    — :class:`NodeOpRelay`: node-op output streamed back to the caller.
* :mod:`.liveness` — :class:`Liveness`: heartbeats, last-seen writes, stale sessions, the
  disconnect save, applied config versions.

The hub itself speaks the session protocol: it admits the stream (:mod:`.admission`), records
the ``Hello``, registers the session, resends the backlog (then the desired
config if the agent drifted), and dispatches what the agent sends to the parts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from agent.gen import agent_pb2 as pb
from server.agents.admission import admit
from server.agents.ledger import POLL_LOOKBACK, CommandLedger
from server.agents.liveness import SEEN_FLUSH_INTERVAL, Liveness, stale_sessions
from server.agents.pki import FleetCA, PkiError
from server.agents.registry import AgentSession, SessionRegistry
from server.agents.relay import NodeOpRelay
from server.agents.store import AgentStore, CommandOutcome, IssuedCertificate
from server.agents.types import (
    MODE_PB,
    AgentNotConnected,
    ApplyMode,
    NodeOpKind,
    NodeOpResult,
)
from server.metrics import AGENT_RESULTS, CONFIG_PUSHES

__all__ = ["POLL_LOOKBACK", "SEEN_FLUSH_INTERVAL", "SessionHub"]

log = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SessionHub:
    def __init__(
        self,
        store: AgentStore,
        ca: FleetCA,
        *,
        heartbeat_interval: float = 30.0,
        hello_timeout: float = 30.0,
        seen_flush_interval: float = SEEN_FLUSH_INTERVAL,
        poll_interval: float = 1.0,
        now: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._ca = ca
        self.heartbeat_interval = heartbeat_interval
        self.hello_timeout = hello_timeout
        self.seen_flush_interval = seen_flush_interval
        self.poll_interval = poll_interval
        self._now = now
        # Monotonic counters for metrics: sessions, heartbeats, results, commands_sent.
        self.counters: Counter[str] = Counter()
        self.registry = SessionRegistry()
        self.ledger = CommandLedger(store, now, self.counters)
        self.relay = NodeOpRelay(self.registry, self.ledger)
        self.liveness = Liveness(store, now)
        self._sweeper: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self.on_report: Callable[[str], None] | None = None
        """Called (on the event loop) with the machine id once its agent's Hello or command
        result is saved: the rollout runner wakes on it instead of waiting for its next poll."""

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_loop())
        if self._poller is None and self.poll_interval > 0:
            self._poller = loop.create_task(self._poll_loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, self._poller) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = self._poller = None
        self.registry.close_all()
        await self.liveness.drain()

    # -- queries ----------------------------------------------------------------------------------

    def is_connected(self, machine_id: str) -> bool:
        return machine_id in self.registry

    def connected(self) -> list[str]:
        return self.registry.machines()

    def applied_version(self, machine_id: str) -> str | None:
        return self.liveness.applied_version(machine_id)

    def open_streams(self) -> int:
        """Node ops whose output is still being relayed (followed logs included)."""
        return len(self.relay)

    async def wait_connected(self, machine_id: str, timeout: float) -> None:
        await self.registry.wait_connected(machine_id, timeout)

    # -- commands ---------------------------------------------------------------------------------

    async def push_config(
        self,
        machine_id: str,
        version: str,
        config_json: str,
        mode: ApplyMode = ApplyMode.AUTO,
        *,
        try_timeout_seconds: int = 120,
    ) -> str:
        """Queue a config for the machine (sent now if connected, else on connect); it
        supersedes an older one still pending."""
        cmd = pb.Command(
            id=self.ledger.new_id(),
            apply_config=pb.ApplyConfig(
                version=version,
                config_json=config_json,
                mode=MODE_PB[mode],
                try_timeout_seconds=try_timeout_seconds,
            ),
        )
        await self._submit(machine_id, cmd, persist=True)
        CONFIG_PUSHES.inc()
        return cmd.id

    async def reboot(self, machine_id: str) -> str:
        cmd = pb.Command(id=self.ledger.new_id(), reboot=pb.Reboot())
        await self._submit(machine_id, cmd, persist=True)
        return cmd.id

    async def confirm_config(self, machine_id: str, version: str) -> str:
        cmd = pb.Command(id=self.ledger.new_id(), confirm_config=pb.ConfirmConfig(version=version))
        await self._submit(machine_id, cmd, persist=True)
        return cmd.id

    async def renew_certificate(self, machine_id: str) -> str:
        """Ask the agent to renew its client certificate now (normally it does so by itself)."""
        if machine_id not in self.registry:
            raise AgentNotConnected(machine_id)
        cmd = pb.Command(id=self.ledger.new_id(), renew_certificate=pb.RenewCertificate())
        await self._submit(machine_id, cmd, persist=False)
        return cmd.id

    async def wait_result(self, command_id: str, timeout: float) -> CommandOutcome:
        return await self.ledger.wait_result(command_id, timeout)

    def node_op_stream(
        self,
        machine_id: str,
        kind: NodeOpKind,
        *,
        service: str = "",
        tail_lines: int = 0,
        timeout: float = 30.0,
        follow: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """Run a diagnostic on the node and yield its output as it arrives.

        ``timeout`` bounds the whole op; with ``follow`` (logs, dmesg) it bounds only the wait
        for the first output, after which the stream lasts until the caller stops iterating
        (the agent is told to stop) or the session ends (:class:`AgentDisconnected`)."""
        return self.relay.stream(
            machine_id,
            kind,
            service=service,
            tail_lines=tail_lines,
            timeout=timeout,
            follow=follow,
        )

    async def node_op(
        self,
        machine_id: str,
        kind: NodeOpKind,
        *,
        service: str = "",
        tail_lines: int = 0,
        timeout: float = 30.0,
    ) -> NodeOpResult:
        """The whole output of a (not followed) node op; a failed op is ``ok=False``."""
        return await self.relay.collect(
            machine_id, kind, service=service, tail_lines=tail_lines, timeout=timeout
        )

    async def poll_pending(self) -> int:
        """One cross-replica poll (:meth:`CommandLedger.poll`); how many commands were sent."""
        return await self.ledger.poll(self.registry)

    async def _submit(self, machine_id: str, cmd: pb.Command, *, persist: bool) -> None:
        await self.ledger.submit(machine_id, cmd, None, persist=persist)
        # Looked up after the save: a session that opened meanwhile loaded the backlog before
        # this command was saved, so it must get it here.
        session = self.registry.get(machine_id)
        if session is not None:
            self.counters["commands_sent"] += 1
            session.send(pb.ServerMessage(command=cmd))

    # -- the session protocol ---------------------------------------------------------------------

    async def run_session(
        self,
        machine_id: str,
        peer: str,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext,
        *,
        cert_serial: int | None = None,
    ) -> AsyncIterator[pb.ServerMessage]:
        """Drive one authenticated stream. ``machine_id`` comes from the peer certificate,
        ``cert_serial`` is its serial (None only where no certificate exists: unit tests)."""
        it = request_iterator.__aiter__()
        hello = await admit(
            self._store,
            machine_id,
            peer,
            it,
            context,
            hello_timeout=self.hello_timeout,
            cert_serial=cert_serial,
        )
        loop = asyncio.get_running_loop()
        session = AgentSession(
            machine_id, peer, cert_serial, boot_id=hello.boot_id, last_seen=loop.time()
        )
        session.config_version = hello.config_version
        # Record what the agent said before the session becomes visible, so whoever sees
        # "connected" also sees its inventory.
        await self.liveness.hello(session, hello)
        self.registry.add(session)
        self.counters["sessions"] += 1
        self._reported(machine_id)
        try:
            await context.send_initial_metadata(())  # tells the agent the session is accepted
            await self._send_backlog(session, hello)
            session.reader = loop.create_task(self._read_loop(session, it))
            while True:
                msg = await session.outbox.get()
                if msg is None:
                    break
                yield msg
        finally:
            if session.reader is not None:
                session.reader.cancel()
                # The cancelled task keeps its traceback, whose frames hold the session: with
                # this link the ended session (and the gRPC call objects its reader's frames
                # hold) is a reference cycle, left for a full GC pass to find.
                session.reader = None
            self.relay.session_ended(session)
            if self.registry.remove(session):
                await self.liveness.record_disconnected(machine_id)
            log.info("session closed machine=%s peer=%s", machine_id, peer)

    async def _send_backlog(self, session: AgentSession, hello: pb.Hello) -> None:
        """Resend every saved command, then push the desired config if the agent drifted."""
        mid = session.machine_id
        has_apply = False
        for cmd in await self.ledger.load_backlog(mid):
            has_apply = has_apply or cmd.HasField("apply_config")
            session.send(pb.ServerMessage(command=cmd))
        desired = await self._store.get_desired_config(mid)
        # Not the version in effect, staged, or a `try` the node reverted (an unconfirmed try
        # must not become permanent because the agent reconnected).
        settled = (hello.config_version, hello.staged_config_version, hello.reverted_config_version)
        if desired is not None and desired.version not in settled and not has_apply:
            log.info(
                "config drift machine=%s have=%s want=%s",
                mid,
                hello.config_version,
                desired.version,
            )
            await self.push_config(mid, desired.version, desired.config_json)

    async def _read_loop(self, session: AgentSession, it: AsyncIterator[pb.AgentMessage]) -> None:
        mid = session.machine_id
        try:
            async for msg in it:
                self.liveness.heard(session)
                await self._dispatch(session, msg)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass
        except Exception:
            log.exception("session reader failed machine=%s", mid)
        finally:
            # The agent half-closed or the stream broke: end the writer too.
            session.outbox.put_nowait(None)

    async def _dispatch(self, session: AgentSession, msg: pb.AgentMessage) -> None:
        mid = session.machine_id
        kind = msg.WhichOneof("body")
        self.counters[kind or "unknown"] += 1
        if kind == "heartbeat":
            self.liveness.heartbeat(mid)
            if msg.heartbeat.config_version != session.config_version:
                session.config_version = msg.heartbeat.config_version
                await self.liveness.note_applied(mid, msg.heartbeat.config_version)
        elif kind == "result":
            await self._on_result(session, msg.result)
        elif kind == "chunk":
            self.relay.on_chunk(msg.chunk.command_id, msg.chunk.data)
        elif kind == "certificate_request":
            await self._on_csr(session, msg.certificate_request.csr_pem)
        elif kind == "hello":
            log.warning("second Hello ignored machine=%s", mid)

    async def _on_result(self, session: AgentSession, r: pb.CommandResult) -> None:
        mid = session.machine_id
        outcome = CommandOutcome(
            r.command_id, r.ok, r.error, r.applied_version, bytes(r.output), self._now()
        )
        await self.ledger.forget(mid, r.command_id)
        AGENT_RESULTS.labels(
            "apply" if r.applied_version else "other", "ok" if r.ok else "failed"
        ).inc()
        if r.applied_version:
            session.config_version = r.applied_version
            await self.liveness.note_applied(mid, r.applied_version)
        if r.command_id not in self.relay:
            await self._store.record_command_result(mid, outcome)
            self._reported(mid)
        self.ledger.wake(outcome)
        self.relay.on_result(r.command_id, bytes(r.output))
        if not r.ok:
            log.warning("command failed machine=%s command=%s error=%s", mid, r.command_id, r.error)

    def _reported(self, machine_id: str) -> None:
        if self.on_report is not None:
            self.on_report(machine_id)

    async def _on_csr(self, session: AgentSession, csr_pem: str) -> None:
        mid = session.machine_id
        try:
            issued = self._ca.sign_client_csr(csr_pem.encode(), mid)  # CN from the session
        except PkiError as exc:
            log.warning("renewal refused machine=%s error=%s", mid, exc)
            return
        await self._store.record_certificate(
            mid, IssuedCertificate(issued.serial, issued.not_after)
        )
        cmd = pb.Command(
            id=self.ledger.new_id(),
            new_certificate=pb.NewCertificate(
                cert_pem=issued.cert_pem.decode(),
                ca_pem=self._ca.cert_pem.decode(),
                not_after=int(issued.not_after.timestamp()),
            ),
        )
        session.send(pb.ServerMessage(command=cmd))
        log.info("certificate renewed machine=%s not_after=%s", mid, issued.not_after.isoformat())

    # -- background loops -------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        """Close silent sessions and write last-seen times (the sweeper reads the interval
        each round)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.seen_flush_interval)
            silent = stale_sessions(self.registry.sessions(), loop.time(), self.heartbeat_interval)
            for s in silent:
                log.warning("session stale, closing machine=%s", s.machine_id)
                s.close()
            try:
                await self.liveness.flush_seen()
                await self.close_revoked()
            except Exception:
                log.exception("sweep failed")

    async def close_revoked(self) -> int:
        """Close the sessions whose certificate is no longer accepted (revoked, replaced by a
        new enrollment, machine deleted) by any replica; returns how many."""
        closed = 0
        for s in await self.liveness.revoked(self.registry.sessions()):
            if self.registry.get(s.machine_id) is s:
                log.warning("session of a revoked certificate closed machine=%s", s.machine_id)
                s.close()
                closed += 1
        return closed

    def close_session(self, machine_id: str) -> bool:
        """Close the machine's session here, if any (after its certificate was revoked)."""
        return self.registry.close(machine_id)

    async def _poll_loop(self) -> None:
        """Send commands other replicas saved for the agents this replica holds."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll_pending()
            except Exception:
                log.exception("pending-command poll failed")
