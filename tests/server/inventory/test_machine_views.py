"""The fast read path (one query per page: the database aggregates each machine's NICs and labels
into JSON, ``views.view_columns``) answers byte for byte what the plain ORM reading of the
same rows answers, on SQLite and PostgreSQL, for machines with every field filled (and for ones
with every optional field empty)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session

from server.inventory import listview, migrate
from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.models import Machine, MachineLabel, Nic
from server.inventory.selectors import parse
from tests.peers.database import fresh_database


def encode(doc: Any) -> bytes:
    """The API's encoder (``server/api/machines.py``)."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def slow_view(m: Machine) -> dict[str, Any]:
    """The reference: ORM objects, relationships loaded by SQLAlchemy, sorted in Python."""
    iso = inventory.iso
    return {
        "id": m.id,
        "name": m.name,
        "uuid": m.smbios_uuid,
        "serial": m.serial,
        "nics": [
            {"mac": n.mac, "name": n.name, "ip": n.ip} for n in sorted(m.nics, key=lambda n: n.mac)
        ],
        "labels": dict(sorted(m.labels.items())),
        "phase": m.phase,
        "power": {
            "last_request": m.power_request,
            "observed": m.power_observed,
            "observed_at": iso(m.power_observed_at),
            "error": m.power_error,
        },
        "fault_reason": m.fault_reason,
        "image": m.image,
        "boot_from": m.boot_from,
        "trial_image": m.trial_image,
        "bmc": None
        if m.bmc_address is None
        else {
            "driver": m.bmc_driver,
            "scheme": None if m.bmc_driver == "ipmi" else m.bmc_scheme,
            "address": m.bmc_address,
            "port": m.bmc_port,
            "username": m.bmc_username,
            "has_password": m.bmc_password_enc is not None,
            "verify_tls": m.bmc_verify_tls,
            "has_ca_bundle": m.bmc_ca_bundle is not None,
        },
        "hardware": m.hardware,
        "created_at": iso(m.created_at),
        "updated_at": iso(m.updated_at),
        "revision": m.revision,
    }


def _full(i: int) -> Machine:
    """Every field filled, with values that stress encoding: non-ASCII, quotes, control
    characters, nested JSON, floats, timestamps with and without microseconds."""
    return Machine(
        id=f"00000000-0000-4000-8000-{i:012d}",
        name=f"node-{i:02d}",
        smbios_uuid=f"10000000-0000-4000-8000-{i:012d}",
        serial=f'SN "{i}" é\\',
        phase=("ready", "provisioning", "maintenance")[i % 3],
        power_observed="on",
        power_observed_at=datetime(2026, 11, 29, 1, 2, 3, 0 if i % 2 else 456789, tzinfo=UTC),
        power_error="timeout\nafter 3 tries\t✓",
        power_request={
            "kind": "power",
            "action": "cycle",
            "at": "2026-11-29T01:02:03Z",
            "operation_id": "op-1",
            "result": {"ok": True, "ms": 12.5},
            "error": None,
        },
        fault_reason="disk ☠ failed",
        bmc_driver=("redfish", "ipmi")[i % 2],
        bmc_address=f"10.0.0.{i}",
        bmc_port=443 if i % 2 == 0 else 623,
        bmc_username="admin",
        bmc_password_enc="gAAAA-not-shown",
        bmc_verify_tls=bool(i % 2),
        bmc_ca_bundle="-----BEGIN CERTIFICATE-----",
        image="debian-12",
        boot_from="network" if i % 2 else "disk",
        trial_image="debian-13",
        bmc_scheme="https",
        hardware={
            "cpus": 64,
            "memory_gib": 512.25,
            "disks": [{"model": "Samsung PM9A3 — 3.84 TB", "size": 3840755982336}],
            "vendor": 'Dell "Inc."',
            "ratio": 1e-7,
            "none": None,
        },
        created_at=datetime(2026, 1, 1, 0, 0, i, 123000 * (i % 2), tzinfo=UTC),
        updated_at=datetime(2026, 2, 1, 12, 0, i, tzinfo=UTC),
        nics=[
            Nic(mac=f"02:00:00:00:01:{i:02x}", name="eno2", ip=f"10.1.0.{i}"),
            Nic(mac=f"02:00:00:00:00:{i:02x}", name="eno1", ip=None),
        ],
        label_rows=[
            MachineLabel(key="zone", value=f"z{i % 2}"),
            MachineLabel(key="example.com/rack", value="r01"),
            MachineLabel(key="role", value="worker"),
            MachineLabel(key="empty", value=""),
        ],
    )


def _bare(i: int) -> Machine:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    return Machine(
        id=f"00000000-0000-4000-9000-{i:012d}",
        name=f"bare-{i:02d}",
        phase="discovered",
        power_observed="unknown",
        hardware={},
        created_at=now,
        updated_at=now,
        nics=[],
        label_rows=[],
    )


def test_fast_path_matches_orm_byte_for_byte(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = create_engine(db_url)
    with Session(engine) as s, s.begin():
        s.add_all([_full(i) for i in range(1, 13)] + [_bare(i) for i in range(1, 4)])
    with Session(engine) as s:
        machines = list(s.scalars(select(Machine).order_by(Machine.name)))
        slow = [slow_view(m) for m in machines]
        assert len(slow) == 15

        # one machine by id and by name
        for m, want in zip(machines, slow, strict=True):
            assert encode(inventory.machine_view(s, m.name)) == encode(want)
            assert encode(inventory.machine_views(s, [m.id])[0]) == encode(want)

        # pages: every machine, in each sort, across cursors
        for sort in ("name", "-created_at", "phase"):
            got: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = inventory.list_machines(s, limit=4, sort=sort, cursor=cursor)
                got += page.items
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            by_id = {v["id"]: v for v in slow}
            assert encode(got) == encode([by_id[v["id"]] for v in got])
            assert sorted(v["id"] for v in got) == sorted(by_id)

        # a selector page starting from its label rows, and one walking the sort index
        for selector in ("zone=z1", "role=worker,!missing"):
            page = inventory.list_machines(s, selector=parse(selector), limit=100)
            want = [v for v in slow if v["labels"].get(selector.split("=")[0]) is not None]
            if selector == "zone=z1":
                want = [v for v in slow if v["labels"].get("zone") == "z1"]
            assert want and encode(page.items) == encode(want)
    engine.dispose()


# --- the read model: machines.list_view (server/inventory/listview.py) --------------------------


def _slow_body(s: Session, **kw: Any) -> bytes:
    page = inventory.list_machines(s, **kw)
    return encode({"items": page.items, "next_cursor": page.next_cursor})


def _fast_body(s: Session, **kw: Any) -> bytes:
    """The read model's page, checked against the slow path of the same session."""
    fast = inventory.page_body(s, **kw)
    assert fast == _slow_body(s, **kw), kw
    return fast


def _stale(db: Database) -> list[str]:
    with db.read() as s:
        return list(s.scalars(select(Machine.name).where(Machine.list_view.is_(None))))


def _assert_fresh(db: Database) -> None:
    """No view is stale, and each is what the slow path renders now."""
    assert _stale(db) == []
    with db.read() as s:
        for mid, stored in s.execute(select(Machine.id, Machine.list_view)).all():
            assert stored == encode(inventory.machine_views(s, [mid])[0])


PAGES: list[dict[str, Any]] = [
    {"sort": "name", "limit": 4},
    {"sort": "-created_at", "limit": 5},
    {"sort": "phase", "limit": 3},
    {"sort": "-updated_at", "limit": 100},
    {"selector": parse("zone=z1"), "limit": 100},
    {"selector": parse("role=worker,!missing"), "limit": 2},
    {"phase": "ready", "limit": 100},
]


def test_read_model_matches_the_slow_path_byte_for_byte(db: Database) -> None:
    """Machines written through the server's sessions carry their view, rendered at commit; a
    page and one machine from the stored bytes are exactly the slow path's, across cursors, and
    the stored bytes are what is served (a marker written into one shows up)."""
    with db.write() as s:
        s.add_all([_full(i) for i in range(1, 13)] + [_bare(i) for i in range(1, 4)])
    _assert_fresh(db)
    with db.read() as s:
        machines = list(s.scalars(select(Machine).order_by(Machine.name)))
        stored = {r.id: r.list_view for r in s.execute(select(Machine.id, Machine.list_view))}
        for m in machines:
            assert stored[m.id] == encode(slow_view(m))  # the ORM reference
            assert inventory.machine_body(s, m.name) == encode(slow_view(m))
            assert inventory.machine_body(s, m.id) == encode(slow_view(m))
        for kw in PAGES:
            seen, cursor = 0, None
            while True:
                body = _fast_body(s, **kw, cursor=cursor)
                doc = json.loads(body)
                seen += len(doc["items"])
                if (cursor := doc["next_cursor"]) is None:
                    break
            assert seen > 0, kw
    marker = b'{"marker":"\xc3\xa9"}'
    with db.write() as s:  # setting only list_view keeps it (the triggers let it through)
        s.execute(update(Machine).where(Machine.name == "node-01").values(list_view=marker))
    with db.read() as s:
        assert marker in inventory.page_body(s, limit=100)
        assert inventory.machine_body(s, "node-01") == marker


def test_stale_views_are_answered_the_slow_way_and_healed(db_url: str) -> None:
    """Rows written around the sessions (a bulk load, a migration) have no view: reads answer
    the slow way, byte for byte the same, until :func:`listview.heal` renders them."""
    migrate.upgrade(db_url)
    engine = create_engine(db_url)
    with Session(engine) as s, s.begin():  # a plain session: no commit hook
        s.add_all([_full(i) for i in range(1, 7)] + [_bare(1)])
    engine.dispose()
    db = Database.connect(db_url)
    try:
        assert len(_stale(db)) == 7
        with db.read() as s:
            for kw in PAGES:
                _fast_body(s, **kw)
            for name in ("node-01", "bare-01"):
                assert inventory.machine_body(s, name) == encode(inventory.machine_view(s, name))
        assert listview.heal(db, batch=3) == 7
        _assert_fresh(db)
    finally:
        db.dispose()


RAW_WRITES = [
    ("machine column", "UPDATE machines SET serial = 'x' WHERE name = 'node-01'"),
    ("machine json", "UPDATE machines SET power_error = 'e' WHERE name = 'node-01'"),
    (
        "nic insert",
        "INSERT INTO nics (machine_id, mac) SELECT id, '02:00:00:00:09:09' FROM machines "
        "WHERE name = 'node-01'",
    ),
    ("nic update", "UPDATE nics SET name = 'eth9' WHERE mac = '02:00:00:00:00:01'"),
    ("nic delete", "DELETE FROM nics WHERE mac = '02:00:00:00:00:01'"),
    (
        "label insert",
        "INSERT INTO machine_labels (machine_id, key, value) SELECT id, 'new', 'v' FROM machines "
        "WHERE name = 'node-01'",
    ),
    (
        "label update",
        "UPDATE machine_labels SET value = 'z9' WHERE key = 'zone' AND machine_id = "
        "(SELECT id FROM machines WHERE name = 'node-01')",
    ),
    (
        "label delete",
        "DELETE FROM machine_labels WHERE key = 'role' AND machine_id = "
        "(SELECT id FROM machines WHERE name = 'node-01')",
    ),
]


@pytest.mark.parametrize("sql", [w[1] for w in RAW_WRITES], ids=[w[0] for w in RAW_WRITES])
def test_any_write_clears_the_view_in_the_database(db: Database, sql: str) -> None:
    """The triggers of migration 0016: raw SQL, which no session hook sees, still clears the
    view of exactly the machine it changed; the page then shows the change; the next commit
    through a session renders it."""
    with db.write() as s:
        s.add_all([_full(1), _full(2)])
    _assert_fresh(db)
    with db.read() as s:
        before = inventory.page_body(s, limit=100)
    with db.write_engine.begin() as conn:
        conn.execute(text(sql))
    assert _stale(db) == ["node-01"]
    with db.read() as s:
        after = _fast_body(s, limit=100)
    assert after != before
    with db.write() as s:  # any commit that touches the inventory renders stale views
        s.get_one(Machine, _full(2).id).fault_reason = "next write"
    _assert_fresh(db)


def test_postgresql_refresh_and_row_locks(tmp_path: Path) -> None:
    """PostgreSQL, two transactions at once: a commit renders its own machine although another
    transaction holds a foreign-key reference to it (KEY SHARE: ``FOR NO KEY UPDATE`` does not
    conflict with it), and skips, without waiting, a stale machine another transaction is
    changing; that change's own commit leaves it stale, and the next commit renders it."""
    with fresh_database("postgres", tmp_path) as url:
        migrate.upgrade(url)
        db = Database.connect(url)
        other = db.write_engine.connect()
        try:
            with db.write() as s:
                s.add_all([_full(1), _full(2)])
            x, y = _full(1).id, _full(2).id
            tx = other.begin()  # what inserting a row that references x takes
            other.execute(text("SELECT 1 FROM machines WHERE id = :x FOR KEY SHARE"), {"x": x})
            with db.write() as s:
                s.get_one(Machine, x).fault_reason = "referenced meanwhile"
            assert _stale(db) == []
            tx.rollback()

            with db.write_engine.begin() as conn:  # x stale, committed
                conn.execute(text("UPDATE machines SET serial = 'raw' WHERE id = :x"), {"x": x})
            tx = other.begin()  # x being changed, not committed: its row is locked
            other.execute(text("UPDATE nics SET name = 'held' WHERE mac = '02:00:00:00:00:01'"))
            done = threading.Event()

            def touch_y() -> None:
                with db.write() as s:
                    s.get_one(Machine, y).fault_reason = "while x is locked"
                done.set()

            t = threading.Thread(target=touch_y, daemon=True)
            t.start()
            t.join(20)
            assert done.is_set(), "a commit waited for another transaction's row lock"
            assert _stale(db) == ["node-01"]
            tx.commit()
            with db.read() as s:
                assert b'"held"' in _fast_body(s, limit=100)  # the slow way, the same bytes
            with db.write() as s:
                s.get_one(Machine, y).fault_reason = "next commit"
            _assert_fresh(db)
        finally:
            other.close()
            db.dispose()
