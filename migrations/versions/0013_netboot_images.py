"""machines: how a machine boots (disk or network) and the image a netboot upgrade is trying

Revision ID: 0013
Revises: 0011
Create Date: 2026-11-28 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(
            sa.Column("boot_from", sa.String(length=8), nullable=False, server_default="disk")
        )
        batch.add_column(sa.Column("trial_image", sa.String(length=63), nullable=True))
        batch.create_index("ix_machines_trial_image", ["trial_image"])


def downgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.drop_index("ix_machines_trial_image")
        batch.drop_column("trial_image")
        batch.drop_column("boot_from")
