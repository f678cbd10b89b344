"""machines: power_error and power_request; power_desired dropped (nothing acted on it)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("power_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("power_request", sa.JSON(), nullable=True))
        batch.drop_column("power_desired")


def downgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("power_desired", sa.String(length=16), nullable=True))
        batch.drop_column("power_request")
        batch.drop_column("power_error")
