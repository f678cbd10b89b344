"""Real databases for tests: a fresh SQLite file, or a fresh database on the PostgreSQL server named
by ``BRONZE_TEST_PG_URL`` (default: the local server on 127.0.0.1:5432, database ``test``, as
``postgres`` without a password; ``scripts/test.sh`` sets the URL for the ``bronze_test`` role that
``scripts/ensure-postgres.sh`` creates, which works on a fresh Debian install).
A PostgreSQL that cannot be reached fails the test loudly; it is never skipped."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("BRONZE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'bronze.db'}"
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"bronze_t_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        where = make_url(PG_URL).render_as_string(hide_password=True)
        raise RuntimeError(
            f"PostgreSQL at {where} is not usable: {exc}. scripts/test.sh prepares the local "
            "server (scripts/ensure-postgres.sh: role bronze_test, database test) and sets "
            "BRONZE_TEST_PG_URL; or point BRONZE_TEST_PG_URL at a server where the role may "
            "CREATE DATABASE."
        ) from exc
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
