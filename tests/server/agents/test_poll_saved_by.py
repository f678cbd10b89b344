"""The cross-replica poll fetches only what other hubs saved (``saved_by``, migration 0016): two
command ledgers (two replicas' hubs) over one store, the in-memory one and the database on real
SQLite and PostgreSQL. A command saved by hub A reaches the session hub B holds through B's poll,
never through A's own; a command saved outside a hub (the rollout runner) reaches the replica
holding the session whichever it is."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import pytest

from agent.gen import agent_pb2 as pb
from server.agents.dbstore import DbAgentStore
from server.agents.ledger import CommandLedger
from server.agents.registry import AgentSession, SessionRegistry
from server.agents.store import AgentStore, MemoryAgentStore, PendingCommand
from server.inventory.db import Database
from server.inventory.models import Machine

M1, M2 = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sent(session: AgentSession) -> list[str]:
    out = []
    while not session.outbox.empty():
        msg = session.outbox.get_nowait()
        assert msg is not None
        out.append(msg.command.id)
    return out


async def _scenario(store: AgentStore) -> None:
    a, b = CommandLedger(store, _now, Counter()), CommandLedger(store, _now, Counter())
    assert a.replica != b.replica
    held_by_a, held_by_b = SessionRegistry(), SessionRegistry()
    s1 = AgentSession(M1, "peer-1")  # M1's agent holds its session with A
    s2 = AgentSession(M2, "peer-2")  # M2's with B
    held_by_a.add(s1)
    held_by_b.add(s2)
    since = _now() - dt.timedelta(seconds=60)

    # A saves a command for each machine (an operator on A): M1's is sent by A itself at once.
    r1 = pb.Command(id=a.new_id(), reboot=pb.Reboot())
    r2 = pb.Command(id=a.new_id(), reboot=pb.Reboot())
    await a.submit(M1, r1, s1, persist=True)
    await a.submit(M2, r2, None, persist=True)
    assert _sent(s1) == [r1.id]
    saved = [p for m in (M1, M2) for p in await store.list_pending_commands(m)]
    assert {p.command_id: p.saved_by for p in saved} == {r1.id: a.replica, r2.id: a.replica}

    # A's poll lists none of them (its own); B's lists both and sends M2's to the session it holds.
    assert await store.list_pending_since(since, excluding=a.replica) == []
    assert sorted(await store.list_pending_since(since, excluding=b.replica)) == sorted(
        [(M1, r1.id), (M2, r2.id)]
    )
    assert await a.poll(held_by_a) == 0
    assert await b.poll(held_by_b) == 1
    assert _sent(s2) == [r2.id]
    assert await b.poll(held_by_b) == 0  # sent once

    # A command with no hub's mark (the rollout runner inserts rows itself and then calls the
    # poll of its own replica to deliver them) is listed to every replica, its saver's included.
    c = pb.Command(id="runner-1", confirm_config=pb.ConfirmConfig(version="v1"))
    await store.save_pending_command(
        M1, PendingCommand(c.id, "confirm_config", c.SerializeToString(), _now())
    )
    assert (M1, c.id) in await store.list_pending_since(since, excluding=a.replica)
    assert await b.poll(held_by_b) == 0  # B does not hold M1
    assert await a.poll(held_by_a) == 1
    assert _sent(s1) == [c.id]

    # Acknowledged and deleted: gone from every listing.
    await a.forget(M1, r1.id)
    await b.forget(M2, r2.id)
    await a.forget(M1, c.id)  # awaited: the database store's group commit is done
    assert await store.list_pending_since(since, excluding=None) == []


def test_poll_skips_own_commands_memory_store() -> None:
    asyncio.run(_scenario(MemoryAgentStore()))


def test_memory_store_superseded_apply_leaves_the_listing() -> None:
    store = MemoryAgentStore()
    t = _now()

    async def scenario() -> None:
        await store.save_pending_command(M1, PendingCommand("a1", "apply_config", b"", t, "hub-a"))
        await store.save_pending_command(M1, PendingCommand("a2", "apply_config", b"", t, "hub-b"))
        assert await store.list_pending_since(t, excluding="hub-a") == [(M1, "a2")]
        assert await store.list_pending_since(t, excluding="hub-b") == []
        await store.delete_pending_command(M1, "a2")
        assert await store.list_pending_since(t) == []

    asyncio.run(scenario())


@pytest.mark.usefixtures("db_url")
def test_poll_skips_own_commands_database(db: Database) -> None:
    with db.write() as s:
        for i, mid in enumerate((M1, M2)):
            s.add(Machine(id=mid, name=f"p{i}", phase="ready", hardware={}))
    asyncio.run(_scenario(DbAgentStore(db)))
