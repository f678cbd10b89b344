"""The rollout store's plan answers: a machine held by an unfinished rollout is a 409 naming that
rollout even once the rollout has moved the machine's phase (which alone would be a 422)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from server.errors import Conflict, Invalid
from server.inventory import migrate
from server.inventory.models import Machine
from server.inventory.selectors import parse
from server.rollouts import store
from server.rollouts.decide import MachineState
from server.rollouts.models import RolloutMachine
from server.rollouts.planner import BatchPolicy


def _machine(i: int) -> Machine:
    now = datetime(2026, 11, 29, tzinfo=UTC)
    return Machine(
        id=f"00000000-0000-4000-9000-{i:012d}",
        name=f"node-{i}",
        phase="ready",
        power_observed="on",
        hardware={},
        created_at=now,
        updated_at=now,
        nics=[],
        label_rows=[],
    )


def test_a_claimed_machine_is_a_conflict_before_its_phase_is_judged(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    with Session(engine) as s, s.begin():
        s.add_all([_machine(i) for i in range(3)])
    everyone = parse("")
    with Session(engine) as s, s.begin():
        batches, machines = store.plan(s, everyone, BatchPolicy(batch_size=1))
        assert [len(b.machines) for b in batches] == [1, 1, 1]
        r = store.create(
            s,
            kind="upgrade",
            image=None,
            selector="",
            spec={},
            batches=batches,
            machines=machines,
            actor="test",
        )
        rid = r.id
    with Session(engine) as s, s.begin():
        s.get(Machine, "00000000-0000-4000-9000-000000000000").phase = "upgrading"  # type: ignore[union-attr]
    with Session(engine) as s:
        with pytest.raises(Conflict) as held:
            store.plan(s, everyone, BatchPolicy())
        assert rid in held.value.message
        assert "node-0" in held.value.message
    with Session(engine) as s, s.begin():  # once released, the phase is what answers
        s.execute(update(RolloutMachine).values(claim=None))
    with Session(engine) as s:
        with pytest.raises(Invalid) as wrong:
            store.plan(s, everyone, BatchPolicy())
        assert "node-0" in wrong.value.message
    engine.dispose()


def test_machine_states_per_batch_are_every_rows_state(sqlite_url: str) -> None:
    """The per-batch summary fills uniform batches from the batch list and reads the others'
    rows: the result is each row's state, including a batch that lost a row."""
    migrate.upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    with Session(engine) as s, s.begin():
        s.add_all([_machine(i) for i in range(9)])
    with Session(engine) as s, s.begin():
        batches, machines = store.plan(s, parse(""), BatchPolicy(batch_size=3))
        r = store.create(
            s,
            kind="upgrade",
            image=None,
            selector="",
            spec={},
            batches=batches,
            machines=machines,
            actor="test",
        )
        first, second, third = (b.machines for b in batches)
        done = RolloutMachine.machine_id.in_(first)
        s.execute(update(RolloutMachine).where(done).values(state="succeeded"))
        s.execute(
            update(RolloutMachine)
            .where(RolloutMachine.machine_id == second[0])
            .values(state="active")
        )
        s.query(RolloutMachine).filter(RolloutMachine.machine_id == third[0]).delete()
        rows = s.query(RolloutMachine.machine_id, RolloutMachine.state)
        assert store.machine_states(s, r) == {mid: MachineState(st) for mid, st in rows}
        assert store.machine_states(s, r)[second[0]] is MachineState.ACTIVE
        assert third[0] not in store.machine_states(s, r)
