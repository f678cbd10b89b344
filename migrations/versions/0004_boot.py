"""boot plane: boot profiles, boot assets, netboot timeline

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 03:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "boot_profiles",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("selector", sa.Text(), nullable=False),
        sa.Column("kernel", sa.Text(), nullable=False),
        sa.Column("initrds", sa.JSON(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("agent", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boot_profiles")),
        sa.UniqueConstraint("name", name=op.f("uq_boot_profiles_name")),
    )
    op.create_table(
        "boot_assets",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_boot_assets")),
    )
    op.create_table(
        "boot_timeline",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boot_timeline")),
    )
    with op.batch_alter_table("boot_timeline", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_boot_timeline_at"), ["at"], unique=False)
        batch_op.create_index("ix_boot_timeline_mac_id", ["mac", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("boot_timeline", schema=None) as batch_op:
        batch_op.drop_index("ix_boot_timeline_mac_id")
        batch_op.drop_index(batch_op.f("ix_boot_timeline_at"))
    op.drop_table("boot_timeline")
    op.drop_table("boot_assets")
    op.drop_table("boot_profiles")
