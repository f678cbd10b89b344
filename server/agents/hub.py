"""The session hub: every connected agent's stream, and the commands waiting for each machine.

One :class:`SessionHub` per server process. The session service hands it each authenticated
stream (:meth:`SessionHub.run_session`); the REST layer and controllers call
:meth:`push_config`, :meth:`reboot`, :meth:`confirm_config`, :meth:`node_op`.

Delivery guarantee. A state-changing command (apply config, reboot, confirm) is saved through
the store *before* it is sent and deleted only when the agent's ``CommandResult`` for its id
arrives. Every new session (after a reconnect, a network cut, or a server restart) starts by
sending the machine's saved commands again, oldest first. The agent executes a command id at
most once and applies a config version at most once, so resending is always safe: the result is
"at least once", the effect "exactly once". A newer ``ApplyConfig`` supersedes an older pending
one. Node ops (dmesg, logs, ...) are interactive and not saved: if the agent is not connected
they fail at once; a followed log (``follow=True``) streams until the consumer stops iterating
(the hub then sends ``CancelNodeOp`` so the agent stops reading) or the session ends (the
consumer gets :class:`AgentDisconnected`).

Several replicas. The saved commands are also how a command reaches an agent whose session
another server replica holds: every ``poll_interval`` seconds the hub asks the store for commands
saved recently (by any replica) and sends those it has not sent yet to the agents it holds.
Node ops cannot take that route (they stream back to the caller): on a replica that does not
hold the session they fail with :class:`AgentNotConnected`, and the REST layer tells the caller
the session is held elsewhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from agent.gen import agent_pb2 as pb
from server.agents.pki import FleetCA, PkiError
from server.agents.store import (
    AgentHello,
    AgentStore,
    CommandOutcome,
    IssuedCertificate,
    PendingCommand,
)
from server.agents.types import (
    MODE_PB,
    OP_PB,
    AgentApiError,
    AgentDisconnected,
    AgentNotConnected,
    ApplyMode,
    CommandTimeout,
    NodeOpKind,
    NodeOpResult,
)

log = logging.getLogger(__name__)


@dataclass
class _Session:
    machine_id: str
    peer: str
    outbox: asyncio.Queue[pb.ServerMessage | None] = field(default_factory=asyncio.Queue)
    boot_id: str = ""
    config_version: str = ""
    last_seen: float = 0.0
    reader: asyncio.Task[None] | None = None


@dataclass
class _Stream:
    """A node op's output on its way to the caller (bytes; None = done; an error = failed)."""

    session: _Session
    queue: asyncio.Queue[bytes | AgentApiError | None] = field(default_factory=asyncio.Queue)


# How far back each poll looks for commands saved by other replicas (covers slow commits).
POLL_LOOKBACK = dt.timedelta(seconds=60)


SEEN_FLUSH_INTERVAL = 5.0
"""Seconds between writes of the sessions' last-seen times (one batched statement)."""


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
        self._sessions: dict[str, _Session] = {}
        self._pending: dict[str, dict[str, PendingCommand]] = {}
        self._waiters: OrderedDict[str, asyncio.Future[CommandOutcome]] = OrderedDict()
        self._streams: dict[str, _Stream] = {}
        self._acked: OrderedDict[str, None] = OrderedDict()  # recently finished command ids
        self._applied: dict[str, str] = {}
        self._seen: dict[str, dt.datetime] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._connected_event: dict[str, asyncio.Event] = {}
        self._bookkeeping: set[asyncio.Task[None]] = set()  # disconnects being saved
        # Monotonic counters for metrics: sessions, heartbeats, results, commands_sent.
        self.counters: Counter[str] = Counter()

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
        for s in list(self._sessions.values()):
            self._close(s)
        await self._flush_seen()
        await asyncio.gather(*self._bookkeeping, return_exceptions=True)

    # -- queries ----------------------------------------------------------------------------------

    def is_connected(self, machine_id: str) -> bool:
        return machine_id in self._sessions

    def connected(self) -> list[str]:
        return sorted(self._sessions)

    def applied_version(self, machine_id: str) -> str | None:
        return self._applied.get(machine_id)

    def open_streams(self) -> int:
        """Node ops whose output is still being relayed (followed logs included)."""
        return len(self._streams)

    async def wait_connected(self, machine_id: str, timeout: float) -> None:
        if machine_id in self._sessions:
            return
        ev = self._connected_event.setdefault(machine_id, asyncio.Event())
        await asyncio.wait_for(ev.wait(), timeout)

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
        """Queue a config for the machine (sent now if connected, else on connect)."""
        # A newer config supersedes an older one still pending (the store drops its row).
        mine = self._pending_for(machine_id)
        for cid in [cid for cid, pc in mine.items() if pc.kind == "apply_config"]:
            del mine[cid]
        cmd = pb.Command(
            id=self._new_id(),
            apply_config=pb.ApplyConfig(
                version=version,
                config_json=config_json,
                mode=MODE_PB[mode],
                try_timeout_seconds=try_timeout_seconds,
            ),
        )
        await self._submit(machine_id, cmd, persist=True)
        return cmd.id

    async def reboot(self, machine_id: str) -> str:
        cmd = pb.Command(id=self._new_id(), reboot=pb.Reboot())
        await self._submit(machine_id, cmd, persist=True)
        return cmd.id

    async def confirm_config(self, machine_id: str, version: str) -> str:
        cmd = pb.Command(id=self._new_id(), confirm_config=pb.ConfirmConfig(version=version))
        await self._submit(machine_id, cmd, persist=True)
        return cmd.id

    async def renew_certificate(self, machine_id: str) -> str:
        """Ask the agent to renew its client certificate now (normally it does so by itself)."""
        if machine_id not in self._sessions:
            raise AgentNotConnected(machine_id)
        cmd = pb.Command(id=self._new_id(), renew_certificate=pb.RenewCertificate())
        await self._submit(machine_id, cmd, persist=False)
        return cmd.id

    async def wait_result(self, command_id: str, timeout: float) -> CommandOutcome:
        fut = self._waiters.get(command_id)
        if fut is None:
            raise KeyError(command_id)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise CommandTimeout(command_id) from None

    async def node_op_stream(
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
        session = self._sessions.get(machine_id)
        if session is None:
            raise AgentNotConnected(machine_id)
        cmd = pb.Command(
            id=self._new_id(),
            node_op=pb.NodeOp(
                kind=OP_PB[kind], service=service, tail_lines=tail_lines, follow=follow
            ),
        )
        stream = _Stream(session)
        self._streams[cmd.id] = stream
        finished = False
        try:
            await self._submit(machine_id, cmd, persist=False)
            loop = asyncio.get_running_loop()
            deadline: float | None = loop.time() + timeout
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise CommandTimeout(cmd.id)
                try:
                    item = await asyncio.wait_for(stream.queue.get(), remaining)
                except TimeoutError:
                    raise CommandTimeout(cmd.id) from None
                if item is None:
                    finished = True
                    break
                if isinstance(item, AgentApiError):
                    finished = True
                    raise item
                if follow:
                    deadline = None
                yield item
            outcome = self._waiters[cmd.id].result()
            if not outcome.ok:
                raise AgentApiError(f"node op {kind} failed: {outcome.error}")
        finally:
            self._streams.pop(cmd.id, None)
            if not finished and self._sessions.get(machine_id) is session:
                # The caller went away (or timed out): release the agent's side too.
                session.outbox.put_nowait(
                    pb.ServerMessage(
                        command=pb.Command(
                            id=self._new_id(), cancel_node_op=pb.CancelNodeOp(command_id=cmd.id)
                        )
                    )
                )
                log.info("node op cancelled machine=%s command=%s", machine_id, cmd.id)

    async def node_op(
        self,
        machine_id: str,
        kind: NodeOpKind,
        *,
        service: str = "",
        tail_lines: int = 0,
        timeout: float = 30.0,
    ) -> NodeOpResult:
        chunks: list[bytes] = []
        try:
            async for c in self.node_op_stream(
                machine_id, kind, service=service, tail_lines=tail_lines, timeout=timeout
            ):
                chunks.append(c)
        except AgentNotConnected:
            raise
        except CommandTimeout:
            raise
        except AgentApiError as exc:
            return NodeOpResult(False, str(exc), b"".join(chunks))
        return NodeOpResult(True, "", b"".join(chunks))

    # -- internals: commands ----------------------------------------------------------------------

    @staticmethod
    def _new_id() -> str:
        return uuid.uuid4().hex

    def _pending_for(self, machine_id: str) -> dict[str, PendingCommand]:
        return self._pending.setdefault(machine_id, {})

    async def _drop_pending(self, machine_id: str, command_id: str) -> None:
        self._pending_for(machine_id).pop(command_id, None)
        self._acked[command_id] = None
        while len(self._acked) > 10_000:
            self._acked.popitem(last=False)
        await self._store.delete_pending_command(machine_id, command_id)

    async def _submit(self, machine_id: str, cmd: pb.Command, *, persist: bool) -> None:
        loop = asyncio.get_running_loop()
        self._waiters[cmd.id] = loop.create_future()
        while len(self._waiters) > 100_000:
            _, old = self._waiters.popitem(last=False)
            old.cancel()
        if persist:
            kind = cmd.WhichOneof("op") or ""
            pc = PendingCommand(cmd.id, kind, cmd.SerializeToString(), self._now())
            await self._store.save_pending_command(machine_id, pc)
            self._pending_for(machine_id)[cmd.id] = pc
        session = self._sessions.get(machine_id)
        if session is not None:
            self.counters["commands_sent"] += 1
            session.outbox.put_nowait(pb.ServerMessage(command=cmd))

    # -- internals: sessions ----------------------------------------------------------------------

    async def run_session(
        self,
        machine_id: str,
        peer: str,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ServerMessage]:
        """Drive one authenticated stream. ``machine_id`` comes from the peer certificate."""
        it = request_iterator.__aiter__()
        try:
            first = await asyncio.wait_for(it.__anext__(), self.hello_timeout)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected Hello first")
        if first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected Hello first")
        hello = first.hello
        if hello.machine_id and hello.machine_id != machine_id:
            log.warning(
                "session refused: claimed id differs from certificate cert=%s claimed=%s peer=%s",
                machine_id,
                hello.machine_id,
                peer,
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "identity mismatch")
        if await self._store.get_machine(machine_id) is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "unknown machine")

        loop = asyncio.get_running_loop()
        session = _Session(machine_id, peer, boot_id=hello.boot_id, last_seen=loop.time())
        session.config_version = hello.config_version
        # Record what the agent said before the session becomes visible, so whoever sees
        # "connected" also sees its inventory.
        await self._record_hello(session, hello)
        old = self._sessions.get(machine_id)
        if old is not None:
            log.info("session replaced machine=%s old_peer=%s", machine_id, old.peer)
            self._close(old)
        self._sessions[machine_id] = session
        self.counters["sessions"] += 1
        ev = self._connected_event.pop(machine_id, None)
        if ev:
            ev.set()
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
            for st in self._streams.values():  # node ops in flight cannot finish now
                if st.session is session:
                    st.queue.put_nowait(AgentDisconnected(machine_id))
            if self._sessions.get(machine_id) is session:
                del self._sessions[machine_id]
                await self._record_disconnected(machine_id)
            log.info("session closed machine=%s peer=%s", machine_id, peer)

    async def _record_disconnected(self, machine_id: str) -> None:
        """Save that the session ended, even if gRPC cancels the stream's task meanwhile.

        gRPC cancels a finished RPC's task; a write cut off there (or still queued for a worker
        thread) would leave the machine "connected" in the database for good. The write runs in
        a task of its own that the cancellation does not reach; :meth:`stop` waits for it."""
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

    def _close(self, session: _Session) -> None:
        session.outbox.put_nowait(None)
        if session.reader is not None:
            session.reader.cancel()

    async def _record_hello(self, session: _Session, hello: pb.Hello) -> None:
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
        await self._note_applied(mid, hello.config_version)
        log.info(
            "session open machine=%s peer=%s boot=%s config=%s",
            mid,
            session.peer,
            hello.boot_id,
            hello.config_version or "-",
        )

    async def _send_backlog(self, session: _Session, hello: pb.Hello) -> None:
        """Resend every saved command, then push the desired config if the agent drifted."""
        mid = session.machine_id
        pending = await self._store.list_pending_commands(mid)
        self._pending[mid] = {p.command_id: p for p in pending}
        has_apply = set()
        for p in pending:
            cmd = pb.Command.FromString(p.payload)
            if cmd.HasField("apply_config"):
                has_apply.add(cmd.apply_config.version)
            if p.command_id not in self._waiters:
                self._waiters[p.command_id] = asyncio.get_running_loop().create_future()
            session.outbox.put_nowait(pb.ServerMessage(command=cmd))
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

    async def _note_applied(self, machine_id: str, version: str) -> None:
        if version and self._applied.get(machine_id) != version:
            self._applied[machine_id] = version
            await self._store.record_applied_config(machine_id, version)

    async def _read_loop(self, session: _Session, it: AsyncIterator[pb.AgentMessage]) -> None:
        loop = asyncio.get_running_loop()
        mid = session.machine_id
        try:
            async for msg in it:
                session.last_seen = loop.time()
                kind = msg.WhichOneof("body")
                self.counters[kind or "unknown"] += 1
                if kind == "heartbeat":
                    self._seen[mid] = self._now()
                    if msg.heartbeat.config_version != session.config_version:
                        session.config_version = msg.heartbeat.config_version
                        await self._note_applied(mid, msg.heartbeat.config_version)
                elif kind == "result":
                    await self._on_result(session, msg.result)
                elif kind == "chunk":
                    st = self._streams.get(msg.chunk.command_id)
                    if st is not None:
                        st.queue.put_nowait(msg.chunk.data)
                elif kind == "certificate_request":
                    await self._on_csr(session, msg.certificate_request.csr_pem)
                elif kind == "hello":
                    log.warning("second Hello ignored machine=%s", mid)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass
        except Exception:
            log.exception("session reader failed machine=%s", mid)
        finally:
            # The agent half-closed or the stream broke: end the writer too.
            session.outbox.put_nowait(None)

    async def _on_result(self, session: _Session, r: pb.CommandResult) -> None:
        mid = session.machine_id
        outcome = CommandOutcome(
            r.command_id, r.ok, r.error, r.applied_version, bytes(r.output), self._now()
        )
        if r.command_id in self._pending_for(mid):
            await self._drop_pending(mid, r.command_id)
        if r.applied_version:
            session.config_version = r.applied_version
            await self._note_applied(mid, r.applied_version)
        if r.command_id not in self._streams:
            await self._store.record_command_result(mid, outcome)
        fut = self._waiters.get(r.command_id)
        if fut is not None and not fut.done():
            fut.set_result(outcome)
        st = self._streams.get(r.command_id)
        if st is not None:
            if r.output:
                st.queue.put_nowait(bytes(r.output))
            st.queue.put_nowait(None)
        if not r.ok:
            log.warning("command failed machine=%s command=%s error=%s", mid, r.command_id, r.error)

    async def _on_csr(self, session: _Session, csr_pem: str) -> None:
        mid = session.machine_id
        try:
            issued = self._ca.sign_client_csr(csr_pem.encode(), mid)  # CN from the session
        except PkiError as exc:
            log.warning("renewal refused machine=%s error=%s", mid, exc)
            return
        cert = IssuedCertificate(issued.serial, issued.not_after)
        await self._store.record_certificate(mid, cert)
        cmd = pb.Command(
            id=self._new_id(),
            new_certificate=pb.NewCertificate(
                cert_pem=issued.cert_pem.decode(),
                ca_pem=self._ca.cert_pem.decode(),
                not_after=int(issued.not_after.timestamp()),
            ),
        )
        session.outbox.put_nowait(pb.ServerMessage(command=cmd))
        log.info("certificate renewed machine=%s not_after=%s", mid, issued.not_after.isoformat())

    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.seen_flush_interval)
            limit = loop.time() - 3 * self.heartbeat_interval
            for s in list(self._sessions.values()):
                if s.last_seen < limit:
                    log.warning("session stale, closing machine=%s", s.machine_id)
                    self._close(s)
            try:
                await self._flush_seen()
            except Exception:
                log.exception("record_seen failed")

    async def _poll_loop(self) -> None:
        """Send commands other replicas saved for the agents this replica holds."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll_pending()
            except Exception:
                log.exception("pending-command poll failed")

    async def poll_pending(self) -> int:
        """One poll (see the module docstring). Returns how many commands were sent."""
        if not self._sessions:
            return 0
        rows = await self._store.list_pending_since(self._now() - POLL_LOOKBACK)
        fresh = {
            mid
            for mid, cid in rows
            if mid in self._sessions
            and cid not in self._pending_for(mid)
            and cid not in self._acked
        }
        sent = 0
        for mid in sorted(fresh):
            session = self._sessions.get(mid)
            if session is None:
                continue
            mine = self._pending_for(mid)
            for p in await self._store.list_pending_commands(mid):
                if p.command_id in mine or p.command_id in self._acked:
                    continue
                cmd = pb.Command.FromString(p.payload)
                if cmd.HasField("apply_config"):  # superseded by this one (store did the same)
                    for cid in [c for c, pc in mine.items() if pc.kind == "apply_config"]:
                        del mine[cid]
                mine[p.command_id] = p
                if p.command_id not in self._waiters:
                    self._waiters[p.command_id] = asyncio.get_running_loop().create_future()
                self.counters["commands_sent"] += 1
                session.outbox.put_nowait(pb.ServerMessage(command=cmd))
                sent += 1
                log.info(
                    "command from another replica sent machine=%s command=%s kind=%s",
                    mid,
                    p.command_id,
                    p.kind,
                )
        return sent

    async def _flush_seen(self) -> None:
        if self._seen:
            batch, self._seen = self._seen, {}
            await self._store.record_seen(batch)
