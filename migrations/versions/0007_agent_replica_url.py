"""agent_states.replica_url: the REST URL of the replica holding the agent's session

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_states") as batch:
        batch.add_column(sa.Column("replica_url", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_states") as batch:
        batch.drop_column("replica_url")
