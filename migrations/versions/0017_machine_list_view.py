"""machines.list_view: each machine's API JSON, rendered on write, cleared by triggers (issue 15)

A page of the inventory is its rows' stored JSON joined (``server/inventory/listview.py``).
The column is a cache the database itself keeps honest: triggers set it to ``NULL`` (stale) on
any change to the machine's row, its NICs or its labels, whoever writes them (the ORM, a Core
``UPDATE``, raw SQL); every commit through the server's sessions renders the stale ones again,
and a read that meets a stale one answers the slow way. Nothing here renders: existing rows
start stale and the server renders them in the background when it starts.

SQLite cannot change ``NEW`` in a ``BEFORE`` trigger: its machines trigger is an ``AFTER UPDATE``
that clears the column when the statement did not set it. PostgreSQL's is a ``BEFORE UPDATE``
that clears it in the same row version. The NIC and label triggers on PostgreSQL always update
the machine's row (not only when its view is set): the writer then holds the machine's row lock
until it commits, which is what lets a concurrent refresh (``FOR NO KEY UPDATE SKIP LOCKED``) never
render a machine whose change is not yet committed.

A later migration that rebuilds ``machines``, ``nics`` or ``machine_labels`` on SQLite (batch
mode ``recreate``) drops these triggers and must create them again
(``tests/server/inventory/test_machine_views.py`` fails if a trigger is missing).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STALE_INDEX = "ix_machines_list_view_stale"
CHILDREN = ("nics", "machine_labels")

SQLITE_UP = [
    """CREATE TRIGGER tr_machines_list_view_stale AFTER UPDATE ON machines
    FOR EACH ROW WHEN NEW.list_view IS OLD.list_view AND NEW.list_view IS NOT NULL
    BEGIN UPDATE machines SET list_view = NULL WHERE id = NEW.id; END""",
    *(
        sql
        for t in CHILDREN
        for sql in (
            f"""CREATE TRIGGER tr_{t}_list_view_stale_insert AFTER INSERT ON {t}
            FOR EACH ROW BEGIN
            UPDATE machines SET list_view = NULL WHERE id = NEW.machine_id
            AND list_view IS NOT NULL; END""",  # noqa: S608 (t: a constant table name)
            f"""CREATE TRIGGER tr_{t}_list_view_stale_update AFTER UPDATE ON {t}
            FOR EACH ROW BEGIN
            UPDATE machines SET list_view = NULL WHERE id IN (OLD.machine_id, NEW.machine_id)
            AND list_view IS NOT NULL; END""",  # noqa: S608 (t: a constant table name)
            f"""CREATE TRIGGER tr_{t}_list_view_stale_delete AFTER DELETE ON {t}
            FOR EACH ROW BEGIN
            UPDATE machines SET list_view = NULL WHERE id = OLD.machine_id
            AND list_view IS NOT NULL; END""",  # noqa: S608 (t: a constant table name)
        )
    ),
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS tr_machines_list_view_stale",
    *(
        f"DROP TRIGGER IF EXISTS tr_{t}_list_view_stale_{when}"
        for t in CHILDREN
        for when in ("insert", "update", "delete")
    ),
]

PG_UP = [
    """CREATE FUNCTION machines_list_view_stale() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.list_view IS NOT DISTINCT FROM OLD.list_view THEN
            NEW.list_view := NULL;
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER tr_machines_list_view_stale BEFORE UPDATE ON machines
    FOR EACH ROW EXECUTE FUNCTION machines_list_view_stale()""",
    """CREATE FUNCTION machine_child_list_view_stale() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            UPDATE machines SET list_view = NULL WHERE id = OLD.machine_id;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            UPDATE machines SET list_view = NULL WHERE id = NEW.machine_id;
        END IF;
        RETURN NULL;
    END $$""",
    *(
        f"""CREATE TRIGGER tr_{t}_list_view_stale AFTER INSERT OR UPDATE OR DELETE ON {t}
        FOR EACH ROW EXECUTE FUNCTION machine_child_list_view_stale()"""
        for t in CHILDREN
    ),
]
PG_DOWN = [
    *(f"DROP TRIGGER IF EXISTS tr_{t}_list_view_stale ON {t}" for t in CHILDREN),
    "DROP TRIGGER IF EXISTS tr_machines_list_view_stale ON machines",
    "DROP FUNCTION IF EXISTS machine_child_list_view_stale()",
    "DROP FUNCTION IF EXISTS machines_list_view_stale()",
]


def upgrade() -> None:
    op.add_column("machines", sa.Column("list_view", sa.LargeBinary(), nullable=True))
    op.create_index(
        STALE_INDEX,
        "machines",
        ["id"],
        sqlite_where=sa.text("list_view IS NULL"),
        postgresql_where=sa.text("list_view IS NULL"),
    )
    pg = op.get_bind().dialect.name == "postgresql"
    for sql in PG_UP if pg else SQLITE_UP:
        op.execute(sql)


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for sql in PG_DOWN if pg else SQLITE_DOWN:
        op.execute(sql)
    op.drop_index(STALE_INDEX, table_name="machines")
    op.drop_column("machines", "list_view")  # SQLite >= 3.35 drops a column in place
