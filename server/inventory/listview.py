"""The inventory's read model: each machine's API JSON, rendered when it is written.

``machines.list_view`` holds the bytes :func:`encode` gives for :func:`views.view` of the
machine. A page (or one machine) is then one indexed query returning those bytes, joined into
the response body: no view dicts, no JSON encoding, no NIC or label aggregation per read.

Why it cannot go stale (``tests/server/inventory/test_machine_views.py`` holds each point):

- *The database clears it.* Migration 0017's triggers set ``list_view`` to ``NULL`` on any
  update of the machine's row that does not itself set ``list_view``, and on any insert, update
  or delete of one of its NICs or labels, whatever wrote them (ORM, Core ``UPDATE``, raw SQL).
- *Every commit renders what is stale.* :func:`refresh` runs in every session commit that
  touched the inventory (``readcache._before_commit``), after the last flush: the views written
  are those of the transaction's own final state. On PostgreSQL the stale rows are locked first
  (``FOR NO KEY UPDATE SKIP LOCKED``) and rendered by a later statement; a writer that changed a
  machine holds its row lock until it commits (the NIC and label triggers update the machine's
  row too), so a refresh never renders a change that is not committed, and skips the rows
  another transaction is changing (that transaction renders them itself). On SQLite writers are
  serialised.
- *A read that meets a stale view does not use the fast path*: :func:`page_body` answers the
  whole page the slow way (one statement, one snapshot) when any row of it is stale. A view is
  stale only between a write that bypassed the sessions (a bulk load, a migration) and the next
  commit or the background :func:`heal` the server runs when it starts.

A view shows ``power.observed_at``, which power sync writes on every poll: each poll's commit
renders that machine's view again (~30 us of CPU per machine beside the write itself).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from server.inventory.models import Machine
from server.inventory.views import view, view_columns

if TYPE_CHECKING:
    from server.inventory.db import Database

log = logging.getLogger(__name__)

REFRESH_LIMIT = 2000
"""At most this many stale views rendered per commit: a commit after a bulk load that bypassed
the sessions does not render the whole fleet; :func:`heal` and later commits do the rest."""


def encode(doc: Any) -> bytes:
    """The API's JSON encoder: compact, UTF-8, no NaN (``server/api/machines.py``)."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def refresh(session: Session, limit: int = REFRESH_LIMIT) -> int:
    """Render the stale views (up to ``limit``) in ``session``'s transaction; their count.

    Runs on the session's connection with Core statements: no ORM events, so rendering does
    not count as a change of the inventory (the read cache's generation is not bumped by it)."""
    conn = session.connection()
    stale = select(Machine.id).where(Machine.list_view.is_(None)).limit(limit)
    if conn.dialect.name == "postgresql":
        # FOR NO KEY UPDATE: skips rows another transaction is changing (their writer renders
        # them), not rows merely referenced by another transaction's new foreign key (KEY SHARE)
        stale = stale.with_for_update(skip_locked=True, key_share=True)
    ids = list(conn.scalars(stale))
    if not ids:
        return 0
    table: Table = Machine.__table__  # type: ignore[assignment]
    rows: list[dict[str, Any]] = []
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for r in conn.execute(select(*view_columns(session)).where(Machine.id.in_(chunk))):
            rows.append({"b_id": r.id, "b_view": encode(view(r))})
    if rows:
        conn.execute(
            table.update()
            .where(table.c.id == bindparam("b_id"))
            .values(list_view=bindparam("b_view", type_=table.c.list_view.type)),
            rows,
        )
    return len(rows)


def heal(db: Database, batch: int = 500, stop: threading.Event | None = None) -> int:
    """Render every stale view, ``batch`` per transaction (after a migration or a bulk load that
    bypassed the sessions). The count rendered."""
    total = 0
    while stop is None or not stop.is_set():
        with db.write() as s:
            n = refresh(s, batch)
        total += n
        if n < batch:
            break
    return total


def start_healer(db: Database) -> threading.Event:
    """:func:`heal` in a daemon thread; set the returned event to stop it between batches."""
    stop = threading.Event()

    def run() -> None:
        try:
            n = heal(db, stop=stop)
            if n:
                log.info("rendered %d stale machine views", n)
        except Exception:  # the slow path still answers: log, do not crash the server
            log.exception("rendering stale machine views failed")

    threading.Thread(target=run, name="listview-heal", daemon=True).start()
    return stop


def join_page(fragments: Sequence[bytes], next_cursor: str | None) -> bytes:
    """``encode({"items": [...], "next_cursor": ...})`` from the items' encoded bytes."""
    return b'{"items":[' + b",".join(fragments) + b'],"next_cursor":' + encode(next_cursor) + b"}"
