"""The read cache of GET /machines: coherent across replicas, revocation-safe, ETags, counters.

Two replicas are two independent apps (own caches) on one database, each behind a real uvicorn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import bindparam, update

from server.inventory.db import Database
from server.inventory.models import Machine
from server.inventory.readcache import ReadCache
from tests.peers.apiserver import RunningServer, run_server

SELECTOR = {"selector": "rack=r1,!maintenance"}


@pytest.fixture
def replicas(tmp_path: Path, db_url: str) -> Iterator[tuple[RunningServer, RunningServer]]:
    with run_server(tmp_path / "data", db_url) as a, run_server(tmp_path / "data", db_url) as b:
        yield a, b


def test_write_on_one_replica_is_read_at_once_on_the_other(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    a, b = replicas
    with a.client() as ca, b.client() as cb:
        ca.post(
            "/api/v1/machines",
            json={"name": "n1", "nics": [{"mac": "02:00:00:00:00:01"}], "labels": {"rack": "r1"}},
        ).raise_for_status()
        # Fill b's cache for the page and the machine.
        assert [m["name"] for m in cb.get("/api/v1/machines", params=SELECTOR).json()["items"]] == [
            "n1"
        ]
        first = cb.get("/api/v1/machines/n1").json()
        assert cb.get("/api/v1/machines/n1").json() == first  # served from b's cache

        ca.patch("/api/v1/machines/n1", json={"labels": {"maintenance": ""}}).raise_for_status()
        assert cb.get("/api/v1/machines", params=SELECTOR).json()["items"] == []
        assert cb.get("/api/v1/machines/n1").json()["labels"] == {"rack": "r1", "maintenance": ""}

        ca.delete("/api/v1/machines/n1").raise_for_status()
        r = cb.get("/api/v1/machines/n1")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_revoked_token_is_refused_at_once_by_every_replica(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    a, b = replicas
    with a.client() as ca:
        token = ca.post("/api/v1/tokens", json={"name": "ci", "role": "reader"}).json()["token"]
    with b.client(token) as cb:
        assert cb.get("/api/v1/machines").status_code == 200  # principal now cached on b
        with a.client() as ca:
            ca.delete("/api/v1/tokens/ci").raise_for_status()
        r = cb.get("/api/v1/machines")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


def test_etag_revalidation(api: RunningServer) -> None:
    with api.client() as c:
        c.post(
            "/api/v1/machines", json={"name": "n1", "nics": [{"mac": "02:00:00:00:00:01"}]}
        ).raise_for_status()
        for path in ("/api/v1/machines/n1", "/api/v1/machines?limit=10"):
            r = c.get(path)
            etag = r.headers["etag"]
            again = c.get(path, headers={"If-None-Match": etag})
            assert (
                again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
            )
            assert c.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
        c.patch("/api/v1/machines/n1", json={"serial": "S1"}).raise_for_status()
        r = c.get("/api/v1/machines/n1", headers={"If-None-Match": etag})
        assert r.status_code == 200 and r.json()["serial"] == "S1" and r.headers["etag"] != etag


def test_cache_off_serves_the_same_documents(tmp_path: Path, sqlite_url: str) -> None:
    with (
        run_server(tmp_path / "d", sqlite_url) as on,
        run_server(tmp_path / "d", sqlite_url, api_cache_mb=0) as off,
    ):
        with on.client() as c_on, off.client(on.admin_token) as c_off:
            c_on.post(
                "/api/v1/machines",
                json={
                    "name": "n1",
                    "nics": [{"mac": "02:00:00:00:00:01"}],
                    "labels": {"rack": "r1"},
                },
            ).raise_for_status()
            for path in ("/api/v1/machines/n1", "/api/v1/machines?selector=rack%3Dr1"):
                assert c_on.get(path).json() == c_off.get(path).json() == c_on.get(path).json()


def test_counters_bump_on_commit_only(db_url: str) -> None:
    from server.inventory import migrate

    migrate.upgrade(db_url)
    db = Database.connect(db_url)
    try:
        g0 = db.generations()
        with db.write() as s:
            s.add(Machine(id="00000000-0000-0000-0000-000000000001", name="n1", phase="registered"))
        g1 = db.generations()
        assert (g1.inventory, g1.tokens) == (g0.inventory + 1, g0.tokens)

        with pytest.raises(RuntimeError), db.write() as s:
            s.execute(update(Machine).values(serial="X"))
            raise RuntimeError("abort")
        assert db.generations() == g1  # rolled back: nothing to invalidate

        with db.write() as s:  # a Core bulk statement through the session counts too
            s.execute(update(Machine).values(serial="Y"))
        assert db.generations().inventory == g1.inventory + 1

        with (
            db.write() as s
        ):  # a Core table statement with many parameter sets (power's group commit)
            t = Machine.__table__
            s.execute(
                t.update().where(t.c.id == bindparam("b_id")).values(serial=bindparam("b_serial")),
                [{"b_id": "00000000-0000-0000-0000-000000000001", "b_serial": "Z"}],
            )
        assert db.generations().inventory == g1.inventory + 2

        with db.write() as s:  # a transaction that changes nothing cached bumps nothing
            s.get(Machine, "00000000-0000-0000-0000-000000000001")
        assert db.generations().inventory == g1.inventory + 2
    finally:
        db.dispose()


def test_cache_is_bounded_and_checks_generation() -> None:
    cache = ReadCache(max_bytes=8 * 1000)
    for i in range(100):
        cache.put(("k", i), 1, b"x" * 500)
    assert cache.get(("k", 0), 1) is None  # evicted (LRU)
    assert cache.get(("k", 99), 1) is not None
    assert cache.get(("k", 99), 2) is None  # built under another generation: never served
    assert sum(len(e.body) for e in cache._entries.values()) <= 8 * 1000


def test_postgres_restart_of_connections_is_survived(tmp_path: Path) -> None:
    """The server drops every connection (as on a PostgreSQL restart): the next request opens
    fresh ones, for the async counter read as for the pooled sessions."""
    from sqlalchemy import create_engine, text

    from tests.peers.database import fresh_database

    with fresh_database("postgres", tmp_path) as url, run_server(tmp_path / "data", url) as srv:
        with srv.client() as c:
            c.post(
                "/api/v1/machines", json={"name": "n1", "nics": [{"mac": "02:00:00:00:00:01"}]}
            ).raise_for_status()
            assert c.get("/api/v1/machines/n1").status_code == 200
            killer = create_engine(url, isolation_level="AUTOCOMMIT")
            with killer.connect() as k:
                killed = k.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar()
            killer.dispose()
            assert killed >= 2  # at least the counter connection and a pooled one
            r = c.get("/api/v1/machines/n1")
            assert r.status_code == 200 and r.json()["name"] == "n1", r.text
            c.patch("/api/v1/machines/n1", json={"serial": "S2"}).raise_for_status()
            assert c.get("/api/v1/machines/n1").json()["serial"] == "S2"
