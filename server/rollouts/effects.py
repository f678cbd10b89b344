"""What a runner pass leaves to do after its transaction commits, and the agent outbox it writes
commands to inside the transaction (shared by the upgrade, provisioning and deprovisioning
passes)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from agent.gen import agent_pb2 as pb
from server.inventory.models import AgentPendingCommand, utcnow


@dataclass
class Effects:
    """What to do after the transaction commits."""

    hooks: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    """(rollout id, machine id, hook spec, payload): webhooks to call (the runner skips one
    already being called for that machine)."""
    cycles: list[str] = field(default_factory=list)
    """Machine ids to power-cycle through their BMC."""
    commands: int = 0
    """Agent commands written to the outbox (the local hub is told to deliver them now)."""
    power: list[tuple[str, str, str, float, str, int]] = field(default_factory=list)
    """Provisioning: (rollout id, machine id, up|cycle, delay s, step, attempt) power actions."""


def write_command(s: Session, machine_id: str, cmd: pb.Command, effects: Effects) -> str:
    """The command into the agents' outbox (``agent_pending_commands``) in the pass's
    transaction: it exists exactly when the step that needs it is recorded. Returns its id."""
    cmd.id = str(uuid.uuid4())
    s.add(
        AgentPendingCommand(
            machine_id=machine_id,
            command_id=cmd.id,
            kind=cmd.WhichOneof("op") or "unknown",
            payload=cmd.SerializeToString(),
            created_at=utcnow(),
        )
    )
    effects.commands += 1
    return cmd.id
