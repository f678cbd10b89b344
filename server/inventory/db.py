"""Engines and sessions.

SQLite runs in WAL mode with a busy timeout. Write transactions on SQLite start with
``BEGIN IMMEDIATE`` (a separate engine) so two writers queue instead of failing when one upgrades
its read lock; readers use plain deferred transactions and never block each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from server.inventory.readcache import AsyncPgCounters, Generations, read_generations, track_writes
from server.metrics import DB_SECONDS


def _sqlite_engine(url: str, begin: str, pool_size: int = 10) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=pool_size,
        max_overflow=20,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


@dataclass
class Database:
    """Read and write session factories over one database URL."""

    url: str
    read_engine: Engine
    write_engine: Engine
    counters_engine: Engine
    """Connections for :meth:`generations`: on SQLite a pool of its own (the read runs on the
    event loop); on PostgreSQL the read engine (requests await :meth:`generations_async`)."""
    _read: sessionmaker[Session] = field(init=False, repr=False)
    _write: sessionmaker[Session] = field(init=False, repr=False)
    _writer: AbstractContextManager[object] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # SQLite has one writer. Threads of this process queue for it on a lock here, handed
        # over the moment the holder commits; left to SQLite, a waiting BEGIN IMMEDIATE sleeps in
        # its busy handler (1, 2, 5, ... 100 ms) and the write lock stays free while it sleeps.
        # Other processes on the same file still wait in the busy handler. Reentrant: a write
        # nested in a write on one thread fails in SQLite's busy timeout as it did before.
        self._writer = threading.RLock() if self.is_sqlite else nullcontext()
        self._pg_counters = (
            None
            if self.is_sqlite
            else AsyncPgCounters(
                make_url(self.url)
                .set(drivername="postgresql")
                .render_as_string(hide_password=False)
            )
        )
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        track_writes(self._read)
        track_writes(self._write)

    @classmethod
    def connect(cls, url: str) -> Database:
        if url.startswith("sqlite"):
            # Counters are read on the event loop (server/api/deps.py): a pool of their own, so
            # that read never waits for a connection held by a worker thread.
            counters = _sqlite_engine(url, "BEGIN", pool_size=2)
            return cls(
                url, _sqlite_engine(url, "BEGIN"), _sqlite_engine(url, "BEGIN IMMEDIATE"), counters
            )
        engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        # Requests read PostgreSQL's counters over async connections (generations_async).
        return cls(url, engine, engine, engine)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @contextmanager
    def read(self) -> Iterator[Session]:
        start = time.perf_counter()
        try:
            with self._read() as session:
                yield session
        finally:
            DB_SECONDS.labels("read").observe(time.perf_counter() - start)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on any exception."""
        start = time.perf_counter()
        try:
            with self._writer, self._write() as session, session.begin():
                yield session
        finally:
            DB_SECONDS.labels("write").observe(time.perf_counter() - start)

    async def generations_async(self) -> Generations:
        """:meth:`generations` for the event loop: SQLite's local read (~6 us) runs inline,
        PostgreSQL's round trip is awaited on an async connection."""
        if self._pg_counters is None:
            return self.generations()
        return await self._pg_counters.read()

    async def aclose(self) -> None:
        """Close what belongs to the event loop (the async counter connections)."""
        if self._pg_counters is not None:
            await self._pg_counters.aclose()

    def generations(self) -> Generations:
        """The change counters (one query); read them before the data they validate."""
        conn = self.counters_engine.raw_connection()
        try:
            return read_generations(conn)
        except Exception:
            conn.invalidate()  # e.g. the database restarted: never hand this connection out again
            raise
        finally:
            conn.close()

    def dispose(self) -> None:
        for engine in {self.read_engine, self.write_engine, self.counters_engine}:
            engine.dispose()
