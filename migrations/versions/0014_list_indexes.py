"""list indexes: every list endpoint walks an index in its sort order (issue 16)

A page of a list is ``ORDER BY <sort>, id LIMIT n``: with an index on exactly ``(<sort>, id)``
the database reads the page's rows and stops, at any table size. These replace the one-column
indexes they extend (a composite index serves every query its first column served).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 01:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, old one-column index, new composite index, its columns)
CHANGES = (
    ("machines", "ix_machines_created_at", "ix_machines_created_at_id", ["created_at", "id"]),
    ("machines", "ix_machines_updated_at", "ix_machines_updated_at_id", ["updated_at", "id"]),
    ("machines", "ix_machines_phase", "ix_machines_phase_id", ["phase", "id"]),
    ("events", "ix_events_machine_id", "ix_events_machine_id_id", ["machine_id", "id"]),
    ("events", "ix_events_kind", "ix_events_kind_id", ["kind", "id"]),
    ("operations", "ix_operations_created_at", "ix_operations_created_at_id", ["created_at", "id"]),
)


def upgrade() -> None:
    for table, old, new, cols in CHANGES:
        op.create_index(new, table, cols)
        op.drop_index(old, table_name=table)


def downgrade() -> None:
    for table, old, new, cols in CHANGES:
        op.create_index(old, table, cols[:1])
        op.drop_index(new, table_name=table)
