"""The node-op stream relay: a diagnostic's output on its way from the agent to the caller.

Node ops (dmesg, logs, stats, ps, services) are interactive and not saved: if the agent is not
connected they fail at once (:class:`AgentNotConnected`). The agent answers with
``NodeOpChunk`` messages and then a ``CommandResult``; the relay queues each chunk for the caller
as it arrives. A followed log (``follow=True``) streams until the consumer stops iterating (the
relay then sends ``CancelNodeOp`` so the agent stops reading) or the session ends (the consumer
gets :class:`AgentDisconnected`). Node ops cannot reach a session held by another replica (their
output streams back to the caller): the REST layer forwards the request to that replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from agent.gen import agent_pb2 as pb
from server.agents.ledger import CommandLedger
from server.agents.registry import AgentSession, SessionRegistry
from server.agents.types import (
    OP_PB,
    AgentApiError,
    AgentDisconnected,
    AgentNotConnected,
    CommandTimeout,
    NodeOpKind,
    NodeOpResult,
)

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    """A node op's output on its way to the caller (bytes; None = done; an error = failed)."""

    session: AgentSession
    queue: asyncio.Queue[bytes | AgentApiError | None] = field(default_factory=asyncio.Queue)


class NodeOpRelay:
    """The node ops in flight on this replica, by command id."""

    def __init__(self, registry: SessionRegistry, ledger: CommandLedger) -> None:
        self._registry = registry
        self._ledger = ledger
        self._streams: dict[str, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._streams

    async def stream(
        self,
        machine_id: str,
        kind: NodeOpKind,
        *,
        service: str = "",
        tail_lines: int = 0,
        timeout: float = 30.0,
        follow: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """Run a diagnostic on the node and yield its output as it arrives (see the
        :meth:`SessionHub.node_op_stream` contract)."""
        session = self._registry.get(machine_id)
        if session is None:
            raise AgentNotConnected(machine_id)
        cmd = pb.Command(
            id=self._ledger.new_id(),
            node_op=pb.NodeOp(
                kind=OP_PB[kind], service=service, tail_lines=tail_lines, follow=follow
            ),
        )
        st = _Stream(session)
        self._streams[cmd.id] = st
        finished = False
        try:
            await self._ledger.submit(machine_id, cmd, session, persist=False)
            loop = asyncio.get_running_loop()
            deadline: float | None = loop.time() + timeout
            while True:
                item = await self._next(st, cmd.id, deadline)
                if item is None or isinstance(item, AgentApiError):
                    finished = True
                    if item is None:
                        break
                    raise item
                if follow:
                    deadline = None
                yield item
            fut = self._ledger.future(cmd.id)
            outcome = fut.result() if fut is not None else None
            if outcome is not None and not outcome.ok:
                raise AgentApiError(f"node op {kind} failed: {outcome.error}")
        finally:
            self._streams.pop(cmd.id, None)
            if not finished and self._registry.get(machine_id) is session:
                # The caller went away (or timed out): release the agent's side too.
                cancel = pb.CancelNodeOp(command_id=cmd.id)
                session.send(
                    pb.ServerMessage(
                        command=pb.Command(id=self._ledger.new_id(), cancel_node_op=cancel)
                    )
                )
                log.info("node op cancelled machine=%s command=%s", machine_id, cmd.id)

    async def collect(
        self,
        machine_id: str,
        kind: NodeOpKind,
        *,
        service: str = "",
        tail_lines: int = 0,
        timeout: float = 30.0,
    ) -> NodeOpResult:
        """Run a node op to its end; not connected and timeouts raise, a failed op is a result."""
        chunks: list[bytes] = []
        try:
            async for c in self.stream(
                machine_id, kind, service=service, tail_lines=tail_lines, timeout=timeout
            ):
                chunks.append(c)
        except (AgentNotConnected, CommandTimeout):
            raise
        except AgentApiError as exc:
            return NodeOpResult(False, str(exc), b"".join(chunks))
        return NodeOpResult(True, "", b"".join(chunks))

    @staticmethod
    async def _next(
        st: _Stream, command_id: str, deadline: float | None
    ) -> bytes | AgentApiError | None:
        remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
        if remaining is not None and remaining <= 0:
            raise CommandTimeout(command_id)
        try:
            return await asyncio.wait_for(st.queue.get(), remaining)
        except TimeoutError:
            raise CommandTimeout(command_id) from None

    def on_chunk(self, command_id: str, data: bytes) -> None:
        st = self._streams.get(command_id)
        if st is not None:
            st.queue.put_nowait(data)

    def on_result(self, command_id: str, output: bytes) -> None:
        """The op's ``CommandResult``: its last output, then the end of the stream."""
        st = self._streams.get(command_id)
        if st is not None:
            if output:
                st.queue.put_nowait(output)
            st.queue.put_nowait(None)

    def session_ended(self, session: AgentSession) -> None:
        """Node ops in flight on ``session`` cannot finish now: fail them."""
        for st in self._streams.values():
            if st.session is session:
                st.queue.put_nowait(AgentDisconnected(session.machine_id))
