"""The agent API: gRPC enrollment and mTLS sessions with node agents.

* :mod:`.store`   — :class:`AgentStore`, what this package needs from the database.
* :mod:`.tokens`  — single-use, short-lived, hashed bootstrap tokens.
* :mod:`.types`   — apply modes, node op kinds, errors.
* :mod:`.hub`     — :class:`SessionHub`: connected agents, pending commands, push/node ops.
* :mod:`.service` — the two gRPC servers; :func:`start_agent_api` for ``bronze serve``.
"""

from server.agents.hub import SessionHub
from server.agents.service import AgentApiServer, start_agent_api
from server.agents.store import (
    AgentHello,
    AgentMachine,
    AgentStore,
    BootstrapToken,
    CommandOutcome,
    DesiredConfig,
    IssuedCertificate,
    MemoryAgentStore,
    PendingCommand,
)
from server.agents.tokens import BootstrapTokens, EnrollmentDenied
from server.agents.types import (
    AgentApiError,
    AgentDisconnected,
    AgentNotConnected,
    ApplyMode,
    CommandTimeout,
    NodeOpKind,
    NodeOpResult,
)

__all__ = [
    "AgentApiError",
    "AgentApiServer",
    "AgentDisconnected",
    "AgentHello",
    "AgentMachine",
    "AgentNotConnected",
    "AgentStore",
    "ApplyMode",
    "BootstrapToken",
    "BootstrapTokens",
    "CommandOutcome",
    "CommandTimeout",
    "DesiredConfig",
    "EnrollmentDenied",
    "IssuedCertificate",
    "MemoryAgentStore",
    "NodeOpKind",
    "NodeOpResult",
    "PendingCommand",
    "SessionHub",
    "start_agent_api",
]
