"""The hub's own bookkeeping, driven directly (a fake stream at the gRPC seam).

The end-to-end tests cover sessions over real gRPC; this file pins one race they can only hit
by chance: gRPC cancels a finished stream's task while the hub is still saving the disconnect.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

from agent.gen import agent_pb2 as pb
from server.agents import SessionHub
from server.agents.pki import FleetCA
from server.agents.store import MemoryAgentStore


class SlowDisconnectStore(MemoryAgentStore):
    """Saving a disconnect waits until the test lets it go (a busy database or thread pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def record_disconnected(self, machine_id: str, at: dt.datetime) -> None:
        self.started.set()
        await self.release.wait()
        await super().record_disconnected(machine_id, at)


class FakeContext:
    async def send_initial_metadata(self, _md: object) -> None:
        return None

    async def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"session aborted: {code} {details}")


async def _agent(
    hello_sent: asyncio.Event, hang_up: asyncio.Event
) -> AsyncIterator[pb.AgentMessage]:
    yield pb.AgentMessage(hello=pb.Hello(machine_id="m1", boot_id="b1"))
    hello_sent.set()
    await hang_up.wait()  # then the stream ends: the agent went away


def test_disconnect_is_saved_even_if_the_stream_task_is_cancelled() -> None:
    async def main() -> None:
        store = SlowDisconnectStore()
        store.add_machine("m1")
        hub = SessionHub(store, FleetCA.create())
        hello_sent, hang_up = asyncio.Event(), asyncio.Event()

        async def serve() -> None:
            async for _ in hub.run_session(
                "m1", "peer", _agent(hello_sent, hang_up), FakeContext()
            ):  # type: ignore[arg-type]
                pass

        task = asyncio.create_task(serve())
        await asyncio.wait_for(hello_sent.wait(), 5)
        await asyncio.sleep(0)
        assert hub.is_connected("m1") and "m1" in store.hellos
        hang_up.set()
        await asyncio.wait_for(store.started.wait(), 5)
        task.cancel()  # what gRPC does to a finished RPC's task
        await asyncio.gather(task, return_exceptions=True)
        assert task.done() and not hub.is_connected("m1")
        assert "m1" not in store.disconnected  # still being saved
        store.release.set()
        await hub.stop()  # waits for the save
        assert "m1" in store.disconnected

    asyncio.run(main())
