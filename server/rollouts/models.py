"""Persisted rollouts: the plan, its batches and each machine's place in it.

Every decision of the runner is written here before it is acted on, so a restarted server
resumes from these rows alone (``server.rollouts.decide``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.inventory.models import Base, utcnow


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``upgrade`` (later ``provision``): which step sequence each machine goes through."""
    status: Mapped[str] = mapped_column(String(32), index=True)
    """A ``RolloutStatus``."""
    image: Mapped[str | None] = mapped_column(String(63), index=True)
    selector: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The request as accepted (policy, preserve, health timeout, hooks), defaults filled in."""
    batches: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """The planned batches: ``[{"index", "kind", "domain", "machines": [id, ...]}, ...]``."""
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    __table_args__ = (  # a kind's list, newest first: migration 0014
        Index("ix_rollouts_kind_created_at_id", "kind", "created_at", "id"),
    )


class RolloutMachine(Base):
    __tablename__ = "rollout_machines"

    rollout_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    machine_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    machine_name: Mapped[str] = mapped_column(String(63))
    batch: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    """A ``MachineState``: pending, active, succeeded, failed, skipped."""
    step: Mapped[str] = mapped_column(String(32), default="")
    """Where an active machine is in its step sequence (an ``UpgradeStep``)."""
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """What the runner must know to re-probe the machine after a restart (boot id, slot and
    image before the change, command id)."""
    error: Mapped[str | None] = mapped_column(Text)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claim: Mapped[str | None] = mapped_column(String(36), unique=True)
    """The machine id while its rollout is not finished, else NULL: the unique index makes two
    running rollouts over one machine impossible on every replica (409)."""

    __table_args__ = (Index("ix_rollout_machines_rollout_batch", "rollout_id", "batch"),)
