"""agent_bootstrap_tokens: a spent token is kept (when, which key, which certificate) so a retry
of the enrollment that spent it, whose answer was lost, gets the same certificate back

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_bootstrap_tokens") as batch:
        batch.add_column(sa.Column("spent_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("spent_key_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("spent_cert_pem", sa.Text(), nullable=True))


def downgrade() -> None:
    # A spent token must not become a live one again.
    op.execute("DELETE FROM agent_bootstrap_tokens WHERE spent_at IS NOT NULL")
    with op.batch_alter_table("agent_bootstrap_tokens") as batch:
        batch.drop_column("spent_cert_pem")
        batch.drop_column("spent_key_sha256")
        batch.drop_column("spent_at")
