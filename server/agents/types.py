"""The agent API's vocabularies and errors (shared by the hub, the REST layer and tests)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.gen import agent_pb2 as pb


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


class AgentApiError(Exception):
    """Root error of the agent API."""

    http_status = 500


class AgentNotConnected(AgentApiError):
    """The machine's agent has no session now (retry later). HTTP 409."""

    http_status = 409

    def __init__(self, machine_id: str) -> None:
        self.machine_id = machine_id
        super().__init__(f"agent of machine {machine_id} is not connected")


class AgentDisconnected(AgentNotConnected):
    """The session ended while a node op was running (its output stops there). HTTP 502."""

    http_status = 502

    def __init__(self, machine_id: str) -> None:
        self.machine_id = machine_id
        AgentApiError.__init__(self, f"agent of machine {machine_id} disconnected")


class CommandTimeout(AgentApiError):
    """No result arrived in time (transient). HTTP 504."""

    http_status = 504

    def __init__(self, command_id: str) -> None:
        super().__init__(f"no result for command {command_id} in time")


@dataclass(frozen=True)
class NodeOpResult:
    ok: bool
    error: str
    output: bytes
