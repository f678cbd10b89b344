"""generations: change counters that keep replicas' read caches coherent

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "generations",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_generations")),
    )
    op.bulk_insert(table, [{"name": "inventory", "value": 0}, {"name": "tokens", "value": 0}])


def downgrade() -> None:
    op.drop_table("generations")
