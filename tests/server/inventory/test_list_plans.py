"""Every list query costs what its page holds, not what the fleet holds (issue 16): the plans are
data, and these tests assert on them, on SQLite and PostgreSQL.

The queries are not restated here: each list function runs against a realistically shaped fleet
(racks of 40 machines, 4 roles, 3 zones, two labels unique to each machine, one machine in ten
in maintenance; events, operations, boot steps, rollouts) and every statement it sends is
captured and explained with the same parameters.

- SQLite: ``EXPLAIN QUERY PLAN``. A plan fails when it ``SCAN``s a big table (with or without
  an index), except the paged table walked in the page's order under a LIMIT (no temp B-tree
  sort in that plan), or sorts the rows of a page that should come off the sort index in order
  (``USE TEMP B-TREE FOR ORDER BY`` at the top of the plan).
- PostgreSQL: ``EXPLAIN (FORMAT JSON)`` after ``ANALYZE``, with the planner's default settings
  (``enable_seqscan`` stays on: the assertion is that with real statistics for this many rows
  the planner itself picks the index walk). A plan fails on a ``Seq Scan`` of a big table, or an
  index scan without an index condition of a table other than the paged one, unless the scan
  streams into a ``Limit`` with no blocking node (Sort, Hash, Aggregate, ...) in between (it
  stops when the page, or ``page_driver``'s capped count, is full), or on a ``Sort`` in a
  plan that should walk the sort index (an ``Incremental Sort`` is allowed: its input is
  already in order on the leading column, e.g. ``name, id`` over the unique name index, so it
  stops with the page). Migration 0014's (key, value) statistics are what make the planner
  see how many machines a common label has; without them these plans hash and sort.

Sorting is allowed where it is bounded by the page: a selector whose ``=``/``in`` requirement
has few matches (they are gathered from the label index, then sorted: ``page_driver``), and an
event group (one limited branch per kind, merged).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, insert, text
from sqlalchemy.orm import Session

from bench.api import fleet_labels, fleet_mac
from server.boot import timeline
from server.inventory import machines as inventory
from server.inventory import migrate
from server.inventory.models import (
    BootTimelineEvent,
    Event,
    Machine,
    MachineLabel,
    Nic,
    Operation,
    OperationItem,
)
from server.inventory.selectors import parse
from server.power.listing import list_operations
from server.rollouts import store
from server.rollouts.models import Rollout
from server.types import EventGroup, EventKind
from tests.peers.database import fresh_database

N = 20_000
"""Machines: enough that PostgreSQL's statistics make a sequential scan the expensive choice it
is at fleet scale (at a few hundred rows it is rightly the cheapest plan)."""

BIG = {
    "machines",
    "machine_labels",
    "nics",
    "events",
    "operations",
    "operation_items",
    "boot_timeline",
    "rollouts",
}

KINDS = [k.value for k in EventKind if k.value.startswith(("machine.", "power.", "agent."))]


def _seed(url: str) -> None:
    migrate.upgrade(url)
    engine = create_engine(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    machines, nics, labels, events, steps = [], [], [], [], []
    for i in range(N):
        mid = str(uuid.UUID(int=i + 1))
        at = t0 + timedelta(seconds=i)
        machines.append(
            dict(
                id=mid,
                name=f"node-{i:05d}",
                phase=("ready", "provisioning", "maintenance", "discovered")[i % 4],
                power_observed="on",
                bmc_verify_tls=True,
                hardware={},
                created_at=at,
                updated_at=at + timedelta(seconds=i * 7919 % N),
                revision=1,
            )
        )
        mac = fleet_mac(i)
        nics.append(dict(machine_id=mid, mac=mac))
        labels += [dict(machine_id=mid, key=k, value=v) for k, v in fleet_labels(i).items()]
        for j in range(3):
            events.append(
                dict(
                    created_at=at,
                    machine_id=mid,
                    machine_name=f"node-{i:05d}",
                    actor="seed",
                    kind=KINDS[(i + j) % len(KINDS)],
                    message="seeded",
                    data={},
                )
            )
            steps.append(dict(mac=mac, kind="dhcp", detail={}, at=at, source="server"))
    ops = [
        dict(
            id=str(uuid.UUID(int=i + 1)),
            kind="power",
            action="on",
            params={},
            status="succeeded",
            requested_by="seed",
            created_at=t0 + timedelta(seconds=i // 3),  # ties: the cursor must break them by id
        )
        for i in range(N // 4)
    ]
    rollouts = [
        dict(
            id=str(uuid.UUID(int=i + 1)),
            kind=("upgrade", "provision")[i % 2],
            status="succeeded",
            selector="",
            spec={},
            batches=[],
            reason="",
            created_at=t0 + timedelta(minutes=i),
            updated_at=t0 + timedelta(minutes=i),
            created_by="seed",
        )
        for i in range(N // 4)
    ]
    items = [  # four machines per operation
        dict(
            operation_id=op["id"],
            machine_id=str(uuid.UUID(int=4 * i + j + 1)),
            machine_name=f"node-{4 * i + j:05d}",
            status="succeeded",
            result={},
        )
        for i, op in enumerate(ops)
        for j in range(4)
    ]
    with engine.begin() as conn:
        for model, rows in (
            (Machine, machines),
            (Nic, nics),
            (MachineLabel, labels),
            (Event, events),
            (BootTimelineEvent, steps),
            (Operation, ops),
            (OperationItem, items),
            (Rollout, rollouts),
        ):
            for j in range(0, len(rows), 5000):
                conn.execute(insert(model.__table__), rows[j : j + 5000])
        conn.execute(text("ANALYZE"))
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    tmp: Path = tmp_path_factory.mktemp("plans")
    with fresh_database(request.param, tmp) as url:
        _seed(url)
        engine = create_engine(url)
        yield engine
        engine.dispose()


@dataclass
class Captured:
    statements: list[tuple[str, Any]]


@contextmanager
def captured(engine: Engine) -> Iterator[Captured]:
    got = Captured([])

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            got.statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield got
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _sqlite_problems(conn: Any, sql: str, params: Any, paged: str, sorts: bool) -> list[str]:
    plan = [(row[1], row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
    # Only a sort of the statement's own rows (parent 0) sorts the page; a correlated
    # sub-query's sort orders one row's parts (a machine's NICs by MAC).
    sorted_here = any(p == 0 and d.startswith("USE TEMP B-TREE FOR ORDER BY") for p, d in plan)
    # a SCAN of the paged table in the page's order, under a LIMIT, stops with the page
    walk = "LIMIT" in sql and not sorted_here
    problems = []
    for _, detail in plan:
        scan = re.match(r"SCAN (\w+)", detail)
        if scan and scan.group(1) in BIG and not (walk and scan.group(1) in paged.split()):
            problems.append(detail)
    if sorted_here and not sorts:
        problems.append("USE TEMP B-TREE FOR ORDER BY")
    return [f"{p}\n  in {sql}" for p in problems]


BLOCKING = {"Sort", "Hash", "Aggregate", "Materialize", "SetOp", "Unique", "WindowAgg"}
"""Nodes that read all of their input before they return a row."""


@dataclass(frozen=True)
class Where:
    subplan: bool
    """Inside a SubPlan: evaluated per row of the page (one machine's NICs)."""
    stops: bool
    """Streams into a Limit with nothing blocking in between: it stops when the page is full."""


def _pg_nodes(plan: dict[str, Any], at: Where) -> Iterator[tuple[dict[str, Any], Where]]:
    yield plan, at
    kind = plan["Node Type"]
    stops = (at.stops or kind == "Limit") and kind not in BLOCKING
    for child in plan.get("Plans", []):
        sub = at.subplan or child.get("Parent Relationship") == "SubPlan"
        yield from _pg_nodes(child, Where(sub, stops))


def _pg_problems(conn: Any, sql: str, params: Any, paged: str, sorts: bool) -> list[str]:
    doc = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()
    problems = []
    for node, at in _pg_nodes(doc[0]["Plan"], Where(False, False)):
        kind, rel = node["Node Type"], node.get("Relation Name")
        if kind == "Seq Scan" and rel in BIG and not at.stops:
            problems.append(f"Seq Scan on {rel}")
        if kind in ("Index Scan", "Index Only Scan") and rel in BIG and rel not in paged.split():
            if "Index Cond" not in node and not at.stops:
                problems.append(f"{kind} of all of {rel} ({node.get('Index Name')})")
        # an Incremental Sort's input is already in order: it stops with the page; a SubPlan's
        # sort orders one row's parts
        if kind == "Sort" and not sorts and not at.subplan:
            problems.append(f"{kind} by {node.get('Sort Key')}")
    return [f"{p}\n  in {sql}" for p in problems]


def assert_o_page(
    engine: Engine, paged: str, run: Callable[[Session], Any], *, sorts: bool = False
) -> Any:
    """Run ``run`` and check the plan of every SELECT it sent; return what it returned.
    ``paged``: the tables (space-separated) whose index may be walked in order under a LIMIT."""
    with captured(engine) as got, Session(engine) as s:
        result = run(s)
    assert got.statements, "the list function sent no query"
    check = _pg_problems if engine.dialect.name == "postgresql" else _sqlite_problems
    with engine.connect() as conn:
        problems = [  # a statement without LIMIT reads the rows of the ids it names: it may sort
            p
            for sql, params in got.statements
            for p in check(conn, sql, params, paged, sorts or "LIMIT" not in sql)
        ]
    assert problems == []
    return result


BROAD = [
    "",
    "role in (worker,storage),zone=z1,!maintenance",
    "role=gpu",
    "!maintenance",
    "zone,example.com/serial",
]
"""Selectors whose ``=``/``in`` requirements match many machines: a page walks the sort index."""

NARROW = ["rack=r0007,!maintenance", "asset=a000042", "zone=z2,rack in (r0100,r0101)"]
"""Selectors with a requirement of few matches: a page starts from its label rows."""

SORTS = ["name", "-name", "created_at", "-updated_at", "phase"]


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("selector", BROAD + NARROW)
def test_machine_pages(fleet: Engine, selector: str, sort: str) -> None:
    reqs = parse(selector) if selector else ()

    def two_pages(s: Session) -> list[dict[str, Any]]:
        first = inventory.list_machines(s, selector=reqs, limit=100, sort=sort)
        if first.next_cursor is None:
            return first.items
        nxt = inventory.list_machines(
            s, selector=reqs, limit=100, sort=sort, cursor=first.next_cursor
        )
        return first.items + nxt.items

    items = assert_o_page(fleet, "machines", two_pages, sorts=selector in NARROW)
    assert items, "every selector here matches some machines"
    names = [m["name"] for m in items]
    assert len(set(names)) == len(names)


def test_machine_page_by_phase(fleet: Engine) -> None:
    page = assert_o_page(
        fleet, "machines", lambda s: inventory.list_machines(s, phase="ready", sort="phase")
    )
    assert {m["phase"] for m in page.items} == {"ready"}


def test_one_machine(fleet: Engine) -> None:
    view = assert_o_page(fleet, "machines", lambda s: inventory.machine_view(s, "node-04242"))
    assert view["labels"]["asset"] == "a004242"


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"machine_id": str(uuid.UUID(int=4243))},
        {"kind": EventKind(KINDS[0])},
        {"kind": EventGroup.MACHINE},
        {"kind": EventGroup.AGENT, "machine_id": str(uuid.UUID(int=4243))},
    ],
    ids=["all", "machine", "kind", "group", "group+machine"],
)
def test_event_pages(fleet: Engine, filters: dict[str, Any]) -> None:
    def two_pages(s: Session) -> list[Event]:
        first = inventory.list_events(s, limit=50, **filters)
        if first.next_cursor is None:
            return first.items
        return (
            first.items
            + inventory.list_events(s, limit=50, cursor=first.next_cursor, **filters).items
        )

    rows = assert_o_page(
        fleet, "events", two_pages, sorts=isinstance(filters.get("kind"), EventGroup)
    )
    assert rows
    ids = [e.id for e in rows]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)


def test_operation_pages(fleet: Engine) -> None:
    def two_pages(s: Session) -> list[dict[str, Any]]:
        first = list_operations(s, limit=100)
        return first.items + list_operations(s, limit=100, cursor=first.next_cursor).items

    items = assert_o_page(fleet, "operations", two_pages)
    ids = [o["id"] for o in items]
    assert len(ids) == 200 and len(set(ids)) == 200  # ties on created_at broken by id


def test_machine_timeline(fleet: Engine) -> None:
    def story(s: Session) -> list[dict[str, Any]]:
        items = timeline.read(s, ["02:00:00:00:10:92"], 100)
        return timeline.with_events(s, str(uuid.UUID(int=4243)), items, 100)

    items = assert_o_page(fleet, "boot_timeline events", story)
    assert any(i["source"] == "server" for i in items)


@pytest.mark.parametrize("kind", ["upgrade", "provision"])
def test_rollout_lists(fleet: Engine, kind: str) -> None:
    rows = assert_o_page(fleet, "rollouts", lambda s: store.list_rollouts(s, 50, None, kind=kind))
    assert len(rows) == 50 and {r.kind for r in rows} == {kind}
