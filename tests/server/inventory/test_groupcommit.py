"""Group commit (server/inventory/groupcommit.py) on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import functools

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.groupcommit import GroupCommit, calls
from server.inventory.models import Event, utcnow
from server.types import EventKind


def _event(n: int, s: Session) -> int:
    inventory.record(s, actor="test", kind=EventKind.MACHINE_UPDATED, message=f"write {n}")
    return n


def _broken(s: Session) -> int:
    inventory.record(s, actor="test", kind=EventKind.MACHINE_UPDATED, message="never committed")
    raise ValueError("this write is refused")


def count(db: Database) -> int:
    with db.read() as s:
        query = (
            select(func.count())
            .select_from(Event)
            .where(Event.kind == EventKind.MACHINE_UPDATED.value)
        )
        return int(s.scalar(query) or 0)


def test_concurrent_writes_share_transactions(db: Database) -> None:
    writes = calls(db)

    async def main() -> list[int]:
        calls = [writes(functools.partial(_event, n)) for n in range(200)]
        return list(await asyncio.gather(*calls))

    assert asyncio.run(main()) == list(range(200))  # each caller gets its own result
    assert count(db) == 200
    assert 1 <= writes.transactions < 200 // 4


def test_a_failing_write_fails_alone(db: Database) -> None:
    writes = calls(db)

    async def main() -> list[object]:
        calls = [writes(functools.partial(_event, n)) for n in range(10)]
        calls.insert(5, writes(_broken))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    results = asyncio.run(main())
    assert isinstance(results[5], ValueError)
    assert [r for i, r in enumerate(results) if i != 5] == list(range(10))
    assert count(db) == 10  # the broken write's event was rolled back, the others kept


def test_a_lone_write_is_one_transaction(db: Database) -> None:
    writes = calls(db)
    assert asyncio.run(writes(lambda s: _event(1, s))) == 1
    assert writes.transactions == 1 and count(db) == 1


def test_batch_function_sees_every_queued_argument_once(db: Database) -> None:
    sizes: list[int] = []

    def write_many(s: Session, ns: list[int]) -> list[int]:
        sizes.append(len(ns))
        s.execute(
            insert(Event),
            [
                {
                    "actor": "test",
                    "kind": EventKind.MACHINE_UPDATED.value,
                    "message": f"write {n}",
                    "data": {},
                    "created_at": utcnow(),
                }
                for n in ns
            ],
        )
        return [n * 2 for n in ns]

    writer: GroupCommit[int, int] = GroupCommit(db, write_many)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(writer(n) for n in range(100))))

    assert asyncio.run(main()) == [n * 2 for n in range(100)]
    assert sum(sizes) == 100 and max(sizes) > 1  # one statement for many callers
    assert count(db) == 100
