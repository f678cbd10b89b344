"""The agent API's vocabularies and errors (shared by the hub, the REST layer and tests)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.gen import agent_pb2 as pb
from server.errors import ApiError


class ApplyMode(StrEnum):
    """How an agent applies a config."""

    AUTO = "auto"
    """Apply now; reboot only if a changed field takes effect at boot."""
    NO_REBOOT = "no-reboot"
    """Apply now; fail if a reboot would be needed."""
    STAGED = "staged"
    """Store it; apply at the next boot."""
    TRY = "try"
    """Apply now; revert after the timeout unless confirmed."""


MODE_PB = {
    ApplyMode.AUTO: pb.APPLY_MODE_AUTO,
    ApplyMode.NO_REBOOT: pb.APPLY_MODE_NO_REBOOT,
    ApplyMode.STAGED: pb.APPLY_MODE_STAGED,
    ApplyMode.TRY: pb.APPLY_MODE_TRY,
}


class NodeOpKind(StrEnum):
    """Read-only diagnostics an agent answers (there is no shell)."""

    DMESG = "dmesg"
    """The kernel ring buffer."""
    LOGS = "logs"
    """A service's log (or the system log without a service)."""
    STATS = "stats"
    """Load, memory, uptime."""
    PS = "ps"
    """Processes."""
    SERVICES = "services"
    """Services and their state."""


OP_PB = {
    NodeOpKind.DMESG: pb.NODE_OP_DMESG,
    NodeOpKind.LOGS: pb.NODE_OP_LOGS,
    NodeOpKind.STATS: pb.NODE_OP_STATS,
    NodeOpKind.PS: pb.NODE_OP_PS,
    NodeOpKind.SERVICES: pb.NODE_OP_SERVICES,
}


class AgentApiError(ApiError):
    """Root error of the agent API (an :class:`~server.errors.ApiError`: the REST layer lets it
    through and the one handler answers with the class's status and code)."""

    status, code, template = 500, "agent_error", "{message}"

    def __init__(self, message: str) -> None:
        super().__init__(message=message)


class AgentNotConnected(AgentApiError):
    """The machine's agent has no session now (retry later)."""

    status, code, template = (
        409,
        "agent_unavailable",
        "agent of machine {machine_id} is not connected",
    )

    def __init__(self, machine_id: str) -> None:
        self.machine_id = machine_id
        ApiError.__init__(self, machine_id=machine_id)


class AgentDisconnected(AgentNotConnected):
    """The session ended while a node op was running (its output stops there)."""

    status, code, template = 502, "agent_disconnected", "agent of machine {machine_id} disconnected"


class CommandTimeout(AgentApiError):
    """No result arrived in time (transient)."""

    status, code, template = 504, "timeout", "no result for command {command_id} in time"

    def __init__(self, command_id: str) -> None:
        ApiError.__init__(self, command_id=command_id)


@dataclass(frozen=True)
class NodeOpResult:
    ok: bool
    error: str
    output: bytes
