"""Read cache for hot GETs, kept coherent across replicas by generation counters in the database.

The ``generations`` table holds one counter per cached domain (``inventory``: machines, NICs,
labels; ``tokens``: API tokens). Every write transaction that touched a domain bumps its counter as
its *last* statement, so the new counter becomes visible in the same commit as the data it
describes, and the counter's row lock is taken last (no lock-order deadlock between writers).

A request reads the counters once (one indexed query), *before* it reads any data. A cached entry
is served only if it was built under the counters the request just read; otherwise it is rebuilt.
Reading the counters first means an entry is never newer-labelled than its data: at worst it is
rebuilt once more than needed, never served stale. Any replica's write is seen by every replica's
next request (read-your-writes), which a time-based cache could not promise. This is the model of
Kubernetes' watch cache (serve lists from memory, validated by a resource version), reduced to
what a shared SQL database offers.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from server.inventory import listview
from server.inventory.models import ApiToken, Generation, Machine, MachineLabel, Nic

INVENTORY = "inventory"
TOKENS = "tokens"
DOMAINS = (INVENTORY, TOKENS)
CERTIFICATES = "certificates"
"""Not a read-cache domain: bumped when an agent certificate may have stopped being accepted
(:func:`mark` by the writers of the accepted serials, and any machine deletion), so each
replica's revocation sweep skips its lookup while nothing changed
(``server.agents.liveness``). Its row is created on first use (``server.agents.dbstore``)."""

_TABLE_DOMAIN = {
    Machine.__tablename__: INVENTORY,
    Nic.__tablename__: INVENTORY,
    MachineLabel.__tablename__: INVENTORY,
    ApiToken.__tablename__: TOKENS,
}
_BUMP_KEY = "bronze.generation_bump"


@dataclass(frozen=True)
class Generations:
    inventory: int
    tokens: int


def mark(session: Session, domain: str) -> None:
    """Bump ``domain``'s counter when ``session``'s transaction commits."""
    session.info.setdefault(_BUMP_KEY, set()).add(domain)


def _mark(session: Session, table_name: str | None, *, deleted: bool = False) -> None:
    domain = _TABLE_DOMAIN.get(table_name or "")
    if domain is not None:
        mark(session, domain)
    if deleted and table_name == Machine.__tablename__:  # its agent's certificates go with it
        mark(session, CERTIFICATES)


def _before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
    for obj in (*session.new, *session.dirty):
        _mark(session, getattr(obj, "__tablename__", None))
    for obj in session.deleted:
        _mark(session, getattr(obj, "__tablename__", None), deleted=True)


def _on_execute(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        _mark(state.session, getattr(table, "name", None), deleted=state.is_delete)


def _before_commit(session: Session) -> None:
    session.flush()
    domains = session.info.pop(_BUMP_KEY, None)
    if not domains:
        return
    if INVENTORY in domains:  # render the machine views this transaction made stale
        listview.refresh(session)
    seeded = sorted(domains & set(DOMAINS))  # rows inserted by the migration
    if seeded:
        session.execute(
            update(Generation).where(Generation.name.in_(seeded)).values(value=Generation.value + 1)
        )
    if CERTIFICATES in domains:
        _upsert_bump(session, CERTIFICATES)


def _upsert_bump(session: Session, name: str) -> None:
    """Bump a counter whose row may not exist yet (created by its first bump: no migration).
    An upsert, so two first bumps in concurrent transactions both count."""
    pg = session.get_bind().dialect.name == "postgresql"
    ins = (postgresql.insert if pg else sqlite.insert)(Generation).values(name=name, value=1)
    session.execute(
        ins.on_conflict_do_update(
            index_elements=[Generation.name], set_={"value": Generation.value + 1}
        )
    )


def _after_rollback(session: Session) -> None:
    session.info.pop(_BUMP_KEY, None)


def track_writes(maker: sessionmaker[Session]) -> None:
    """Make every commit through ``maker`` bump the counters of the domains it changed."""
    event.listen(maker, "before_flush", _before_flush)
    event.listen(maker, "do_orm_execute", _on_execute)
    event.listen(maker, "before_commit", _before_commit)
    event.listen(maker, "after_rollback", _after_rollback)


COUNTERS_SQL = "SELECT name, value FROM generations"


def _generations(rows: Any) -> Generations:
    values = dict(rows)
    return Generations(**{d: values.get(d, 0) for d in DOMAINS})


def read_generations(dbapi_connection: Any) -> Generations:
    """Read the counters on a raw driver connection: this runs on every authenticated request, and
    skipping the ORM and the Core compiler makes it ~6 us on SQLite and one round trip on
    PostgreSQL."""
    cur = dbapi_connection.cursor()
    try:
        cur.execute(COUNTERS_SQL)
        return _generations(cur.fetchall())
    finally:
        cur.close()


class AsyncPgCounters:
    """Reads the counters over psycopg's async connections, on the event loop: for PostgreSQL
    the read is a network round trip, and awaiting it beats both blocking the loop and a
    thread-pool hop. At most ``size`` autocommit connections; a request finding none idle waits
    for one (one loop: no lock needed beyond the queue)."""

    def __init__(self, conninfo: str, size: int = 8) -> None:
        self._conninfo, self._size = conninfo, size
        self._idle: asyncio.LifoQueue[Any] = asyncio.LifoQueue()
        self._open = 0

    async def _acquire(self) -> tuple[Any, bool]:
        import psycopg

        if self._idle.empty() and self._open < self._size:
            self._open += 1
            try:
                return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True), False
            except BaseException:
                self._open -= 1
                raise
        return await self._idle.get(), True

    async def _discard(self, conn: Any) -> None:
        self._open -= 1
        await _close_quietly(conn)

    async def read(self) -> Generations:
        import psycopg

        for attempt in (1, 2):
            conn, reused = await self._acquire()
            try:
                cur = await conn.execute(COUNTERS_SQL)
                gens = _generations(await cur.fetchall())
            except psycopg.OperationalError:
                await self._discard(conn)
                if reused and attempt == 1:
                    continue  # an idle connection the server dropped (restart): one fresh try
                raise
            except BaseException:
                await self._discard(conn)
                raise
            self._idle.put_nowait(conn)
            return gens
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        while not self._idle.empty():
            await self._discard(self._idle.get_nowait())


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001, S110 - closing a broken connection may fail; it is gone either way
        pass


@dataclass(frozen=True)
class Entry:
    generation: int
    body: bytes
    etag: str


class ReadCache:
    """A bounded LRU of serialized responses and authenticated principals, each tagged with the
    generation it was built under. Thread-safe (sync endpoints run in a thread pool)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._bytes = 0
        self._principals: dict[str, tuple[int, Any]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: Hashable, generation: int) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.generation != generation:
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, generation: int, body: bytes) -> Entry:
        entry = Entry(
            generation, body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        )
        if not self.enabled or len(body) > self.max_bytes // 8:
            return entry
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[key] = entry
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)
        return entry

    def principal(self, token_hash: str, generation: int) -> Any:
        """The principal cached for a token hash, if no token changed since (e.g. a revocation)."""
        cached = self._principals.get(token_hash)
        return cached[1] if cached is not None and cached[0] == generation else None

    def put_principal(self, token_hash: str, generation: int, principal: Any) -> None:
        if principal is not None and self.enabled:
            with self._lock:
                if len(self._principals) >= 4096:
                    self._principals.clear()
                self._principals[token_hash] = (generation, principal)
