"""The applied-config bookkeeping across a reboot that loses the node's config (a netbooted
machine keeps it in RAM): found in the lab stage, where a provisioned machine's config stayed
"not applied" forever after its power cycle."""

from __future__ import annotations

import asyncio
import datetime as dt

from agent.gen import agent_pb2 as pb
from server.agents.liveness import Liveness
from server.agents.registry import AgentSession
from server.agents.store import MemoryAgentStore


def test_the_same_version_applied_again_after_a_fresh_boot_is_recorded() -> None:
    async def main() -> None:
        store = MemoryAgentStore()
        store.add_machine("m1")
        live = Liveness(store, lambda: dt.datetime.now(dt.UTC))
        s1 = AgentSession("m1", "peer")
        await live.hello(s1, pb.Hello(machine_id="m1", boot_id="b1", config_version=""))
        await live.note_applied("m1", "v1")  # the config took effect
        assert store.applied["m1"] == "v1"
        # the machine reboots afresh: its Hello says nothing is in effect (recorded as such)
        s2 = AgentSession("m1", "peer")
        await live.hello(s2, pb.Hello(machine_id="m1", boot_id="b2", config_version=""))
        assert store.applied["m1"] == ""
        await live.note_applied("m1", "v1")  # the server pushed v1 again; the agent applied it
        assert store.applied["m1"] == "v1"
        await live.note_applied("m1", "v1")  # the same report twice writes once (the cache)
        assert live.applied_version("m1") == "v1"

    asyncio.run(main())
