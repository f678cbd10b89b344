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


ROLLOUTS = ("ix_rollouts_kind_created_at_id", "rollouts", ["kind", "created_at", "id"])
"""``GET /api/v1/upgrades`` and ``/provisions``: one kind, newest first."""


LABEL_STATISTICS = "st_machine_labels_key_value"
"""PostgreSQL only: the planner's estimate for ``key = 'role' AND value = 'gpu'`` multiplies the
two columns' statistics (about 1,000 rows of 20,000 where 5,000 match), so it hashes every match
and sorts them instead of walking the sort index for a page. Multi-column MCV statistics on
(key, value) give it the real frequency of each common label (``ANALYZE``/autovacuum fill them)."""


def upgrade() -> None:
    for table, old, new, cols in CHANGES:
        op.create_index(new, table, cols)
        op.drop_index(old, table_name=table)
    op.create_index(*ROLLOUTS)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE STATISTICS {LABEL_STATISTICS} (mcv, dependencies) "
            "ON key, value FROM machine_labels"
        )
        op.execute("ANALYZE machine_labels")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS IF EXISTS {LABEL_STATISTICS}")
    op.drop_index(ROLLOUTS[0], table_name=ROLLOUTS[1])
    for table, old, new, cols in CHANGES:
        op.create_index(old, table, cols[:1])
        op.drop_index(new, table_name=table)
