"""nics.ip: reserved provisioning address per NIC (DHCP full mode)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nics") as batch:
        batch.add_column(sa.Column("ip", sa.String(length=15), nullable=True))
        batch.create_unique_constraint(batch.f("uq_nics_ip"), ["ip"])


def downgrade() -> None:
    with op.batch_alter_table("nics") as batch:
        batch.drop_constraint(batch.f("uq_nics_ip"), type_="unique")
        batch.drop_column("ip")
