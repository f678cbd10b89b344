"""One runner pass over a real database: a report that allows more than one transition takes
them all in that pass (each recorded with its event), and one that allows none changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select

from agent.gen import agent_pb2 as pb
from server.inventory import migrate
from server.inventory.db import Database
from server.inventory.models import AgentPendingCommand, AgentState, Event, Image, Machine
from server.inventory.secretbox import SecretBox
from server.inventory.selectors import parse
from server.rollouts import store
from server.rollouts.models import RolloutMachine
from server.rollouts.planner import BatchPolicy
from server.rollouts.runner import RolloutRunner, RunnerConfig

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MID = "00000000-0000-4000-9000-000000000001"
OLD, NEW = "a" * 64, "b" * 64
SPEC: dict[str, Any] = {
    "preserve": True,
    "health_timeout_seconds": 600,
    "on_abort": "finish",
    "failure_budget": 0,
    "max_unavailable": None,
    "hooks": {},
}


async def _never(_: str) -> None:
    raise AssertionError("no power action expected")


def _fleet(db: Database) -> str:
    with db.write() as s:
        s.add(
            Machine(
                id=MID,
                name="node-1",
                phase="ready",
                power_observed="on",
                hardware={},
                created_at=NOW,
                updated_at=NOW,
                nics=[],
                label_rows=[],
            )
        )
        s.flush()  # the agent state's foreign key needs the machine first
        manifest = {
            "name": "os-2",
            "version": "2",
            "kernel": {"file": "vmlinuz-2", "sha256": "c" * 64},
            "initrds": [{"file": "initrd-2", "sha256": "d" * 64}],
            "args": [],
        }
        s.add(Image(name="os-2", version="2", manifest=manifest, digest=NEW, created_by="test"))
        s.add(AgentState(machine_id=MID, connected=True, boot_id="boot-1", image_digest=OLD))
    with db.write() as s:
        batches, machines = store.plan(s, parse(""), BatchPolicy(batch_size=1))
        r = store.create(
            s,
            kind="upgrade",
            image="os-2",
            selector="",
            spec=SPEC,
            batches=batches,
            machines=machines,
            actor="test",
        )
        return r.id


def _row(db: Database, rid: str) -> RolloutMachine:
    with db.read() as s:
        row = s.get(RolloutMachine, (rid, MID))
        assert row is not None
        return row


def _steps(db: Database) -> list[str]:
    with db.read() as s:
        events = s.scalars(
            select(Event).where(Event.kind == "rollout.machine.step").order_by(Event.id)
        )
        return [e.data["step"] for e in events]


def _commands(db: Database) -> list[str]:
    with db.read() as s:
        return [c.kind for c in s.scalars(select(AgentPendingCommand))]


def test_one_report_takes_every_transition_it_allows(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    db = Database.connect(sqlite_url)
    rid = _fleet(db)
    runner = RolloutRunner(
        db,
        "replica-1",
        RunnerConfig(asset_base_url="http://127.0.0.1:1"),
        SecretBox(Fernet.generate_key()),
        _never,
        clock=lambda: NOW,
    )
    runner._pass(rid)  # the machine starts: the upgrade command is written
    assert _row(db, rid).step == "writing"
    assert _steps(db) == ["writing"]
    upgrade_cmd = _row(db, rid).detail["command_id"]
    assert _commands(db) == ["upgrade"]

    runner._pass(rid)  # nothing reported: nothing moves, nothing is written
    assert _steps(db) == ["writing"]

    with db.write() as s:  # the agent answered the upgrade and is rebooting
        st = s.get(AgentState, MID)
        assert st is not None
        st.last_command_id, st.last_command_ok, st.connected = upgrade_cmd, True, False
    runner._pass(rid, {MID})
    assert _row(db, rid).step == "booting"

    with db.write() as s:  # back on the new slot, config applied: one Hello
        st = s.get(AgentState, MID)
        assert st is not None
        st.connected, st.boot_id, st.image_digest = True, "boot-2", NEW
    runner._pass(rid, {MID})
    # booting -> verifying -> confirming in the one pass, each step an event, the mark-good
    # command written with the last one
    assert _steps(db) == ["writing", "booting", "verifying", "confirming"]
    assert _row(db, rid).step == "confirming"
    assert sorted(_commands(db)) == ["mark_good", "upgrade"]
    with db.read() as s:
        cmd = s.scalars(
            select(AgentPendingCommand).where(AgentPendingCommand.kind == "mark_good")
        ).one()
        assert pb.Command.FromString(cmd.payload).mark_good.image_digest == NEW

    runner._pass(rid)  # the same observation again: the mark-good is not sent twice
    assert sorted(_commands(db)) == ["mark_good", "upgrade"]
    db.dispose()
