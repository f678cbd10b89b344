"""images, rollouts, rollout_machines; machines.image, boot_profiles.image; agent image state

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 17:51:18.488910
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("signed_by", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_images")),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("image", sa.String(length=63), nullable=True),
        sa.Column("selector", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("batches", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_image"), ["image"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollouts_status"), ["status"], unique=False)

    op.create_table(
        "rollout_machines",
        sa.Column("rollout_id", sa.String(length=36), nullable=False),
        sa.Column("machine_id", sa.String(length=36), nullable=False),
        sa.Column("machine_name", sa.String(length=63), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_machines_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rollout_id", "machine_id", name=op.f("pk_rollout_machines")),
        sa.UniqueConstraint("claim", name=op.f("uq_rollout_machines_claim")),
    )
    with op.batch_alter_table("rollout_machines", schema=None) as batch_op:
        batch_op.create_index(
            "ix_rollout_machines_rollout_batch", ["rollout_id", "batch"], unique=False
        )

    with op.batch_alter_table("boot_profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image", sa.String(length=63), nullable=True))
        batch_op.create_index(batch_op.f("ix_boot_profiles_image"), ["image"], unique=False)

    with op.batch_alter_table("agent_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("slot", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("last_good_digest", sa.String(length=64), nullable=True))

    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image", sa.String(length=63), nullable=True))
        batch_op.create_index(batch_op.f("ix_machines_image"), ["image"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("agent_states", schema=None) as batch_op:
        batch_op.drop_column("last_good_digest")
        batch_op.drop_column("slot")
        batch_op.drop_column("image_digest")

    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_machines_image"))
        batch_op.drop_column("image")

    with op.batch_alter_table("boot_profiles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_boot_profiles_image"))
        batch_op.drop_column("image")

    with op.batch_alter_table("rollout_machines", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_machines_rollout_batch")

    op.drop_table("rollout_machines")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_status"))
        batch_op.drop_index(batch_op.f("ix_rollouts_image"))

    op.drop_table("rollouts")
    op.drop_table("images")
