"""agent_states: certificate revocation (renewed-from serial, revoked_at) and identity conflicts

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_states") as batch:
        batch.add_column(sa.Column("cert_previous_serial", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("cert_revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("identity_conflict", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_states") as batch:
        batch.drop_column("identity_conflict")
        batch.drop_column("cert_revoked_at")
        batch.drop_column("cert_previous_serial")
