"""What agents report reaches the database through one group commit (server/agents/dbstore.py):
in the order it came, sharing transactions, and a report for a machine without an agent-state
row yet creates it. Real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

from server.agents.dbstore import DbAgentStore
from server.agents.store import AgentHello, CommandOutcome, PendingCommand
from server.inventory.db import Database
from server.inventory.models import AgentPendingCommand, AgentState, Machine

MACHINES = [f"00000000-0000-0000-0000-{i:012}" for i in range(1, 21)]
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _hello(boot: str) -> AgentHello:
    return AgentHello("1.0", boot, "", "", {"cpus": 2}, NOW, image_digest="d" * 64, slot="A")


def _machines(db: Database) -> None:
    with db.write() as s:
        for i, mid in enumerate(MACHINES):
            s.add(Machine(id=mid, name=f"r{i}", phase="ready", hardware={}))


def _states(db: Database) -> dict[str, AgentState]:
    with db.read() as s:
        return {st.machine_id: st for st in s.query(AgentState)}


def test_reports_keep_their_order_and_share_transactions(db: Database) -> None:
    _machines(db)
    store = DbAgentStore(db)

    async def scenario() -> None:
        # A reboot as the hub sees it, for 20 machines at once: the old session's disconnect,
        # then the new session's Hello, then a command's result.
        await asyncio.gather(
            *(store.save_pending_command(m, PendingCommand(f"c-{m}", "reboot", b"", NOW))
              for m in MACHINES)
        )  # fmt: skip
        calls = []
        for mid in MACHINES:
            calls += [
                store.record_disconnected(mid, NOW),
                store.record_hello(mid, _hello(f"boot-2-{mid}")),
                store.record_command_result(
                    mid, CommandOutcome(f"c-{mid}", False, "refused", "", b"", NOW)
                ),
                store.delete_pending_command(mid, f"c-{mid}"),
            ]
        await asyncio.gather(*calls)
        # Disconnected after the Hello: the later report wins.
        await asyncio.gather(
            store.record_hello(MACHINES[0], _hello("boot-3")),
            store.record_disconnected(MACHINES[0], NOW),
        )

    asyncio.run(scenario())
    states = _states(db)
    assert sorted(states) == MACHINES  # the first report created each row
    assert not states[MACHINES[0]].connected and states[MACHINES[0]].boot_id == "boot-3"
    for mid in MACHINES[1:]:
        st = states[mid]
        assert st.connected and st.boot_id == f"boot-2-{mid}" and st.slot == "A"
        assert (st.last_command_id, st.last_command_ok, st.last_command_error) == (
            f"c-{mid}",
            False,
            "refused",
        )
    with db.read() as s:
        assert s.query(AgentPendingCommand).count() == 0
    # 82 reports; issued together, they were written in far fewer transactions.
    assert store._reports.transactions < 82 / 2


def test_a_report_for_a_deleted_machine_is_dropped_alone(db: Database) -> None:
    _machines(db)
    store = DbAgentStore(db)
    gone = "00000000-0000-0000-0000-999999999999"

    async def scenario() -> None:
        await asyncio.gather(
            store.record_hello(gone, _hello("x")),
            store.record_disconnected(gone, NOW),
            store.record_hello(MACHINES[0], _hello("boot-1")),
        )

    asyncio.run(scenario())
    states = _states(db)
    assert list(states) == [MACHINES[0]] and states[MACHINES[0]].connected
