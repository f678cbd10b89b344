"""agent_pending_commands.saved_by: the hub that saved the command, so a replica's once-a-second
poll fetches only other replicas' commands (not the 10,000 of its own fleet push)

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows saved before the upgrade stay NULL: every replica's poll looks at those, as before.
    with op.batch_alter_table("agent_pending_commands") as batch:
        batch.add_column(sa.Column("saved_by", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_pending_commands") as batch:
        batch.drop_column("saved_by")
