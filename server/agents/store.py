"""What the agent API needs from the database: the :class:`AgentStore` protocol.

The gRPC layer never touches SQL. Everything it reads or writes about a machine goes through
this protocol; the server implements it on the database, tests use :class:`MemoryAgentStore`.

Every method is a coroutine and must be safe to call concurrently for *different* machines.
Three methods must be atomic: :meth:`AgentStore.delete_bootstrap_token` (compare-and-delete),
:meth:`AgentStore.spend_bootstrap_token` (compare-and-set, so a token is spent once even under
concurrent enrollments) and the pending-command methods for one machine (a command saved before
it is sent survives a server restart).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from server.types import EventKind


@dataclass(frozen=True)
class AgentMachine:
    """What the agent API must know about a machine."""

    machine_id: str
    enrollment_allowed: bool
    """True in the phases where a booting agent may enroll (e.g. provisioning, ready); the DB
    implementation derives it from the machine's phase."""
    accepted: bool = True
    """False while the machine is ``discovered`` (not accepted by an operator or a rule): its
    agent may prove its token and report inventory, but gets no certificate."""


@dataclass(frozen=True)
class SpentToken:
    """What ``Enroll`` keeps of the enrollment that spent a token: enough to answer a retry of
    that same enrollment (same token, same key) whose first answer was lost on the way
    (``docs/agent.md``, "A lost answer")."""

    at: dt.datetime
    key_sha256: str
    """Hex SHA-256 of the CSR's public key (DER SubjectPublicKeyInfo)."""
    cert_pem: str
    """The certificate issued (public)."""


@dataclass(frozen=True)
class BootstrapToken:
    """A stored bootstrap token: only the SHA-256 of the secret is kept."""

    machine_id: str
    token_hash: str  # hex sha256 of the token
    boot_ref: str  # which boot (PXE render) it was issued for
    expires_at: dt.datetime
    spent: SpentToken | None = None
    """None while the token can enroll; set once an enrollment spent it."""


@dataclass(frozen=True)
class AgentHello:
    agent_version: str
    boot_id: str
    config_version: str
    staged_config_version: str
    inventory: dict[str, Any]
    at: dt.datetime
    image_digest: str = ""
    """The OS image this boot runs (digest of its manifest), its slot, and the fallback image."""
    slot: str = ""
    last_good_digest: str = ""


@dataclass(frozen=True)
class DesiredConfig:
    version: str
    config_json: str


@dataclass(frozen=True)
class PendingCommand:
    """A command saved before it is sent; ``payload``: a serialized ``bronze.agent.v1.Command``."""

    command_id: str
    kind: str  # "apply_config" | "reboot" | "confirm_config" | ...
    payload: bytes
    created_at: dt.datetime
    saved_by: str | None = None
    """Which hub saved it (:attr:`CommandLedger.replica <server.agents.ledger.CommandLedger>`,
    random per hub), so a replica's poll skips the commands it sent itself; None: saved outside
    a hub (the rollout runner), which every replica's poll looks at."""


@dataclass(frozen=True)
class CommandOutcome:
    command_id: str
    ok: bool
    error: str
    applied_version: str
    output: bytes
    at: dt.datetime


@dataclass(frozen=True)
class IssuedCertificate:
    serial: int
    not_after: dt.datetime


def certificate_accepted(serial: int, current: str | None, previous: str | None) -> bool:
    """Whether a client certificate with ``serial`` may open a session, given the machine's
    recorded ``current`` serial and the ``previous`` one a renewal replaced (decimal strings;
    see :mod:`server.agents.revocation`)."""
    return str(serial) in {current, previous} - {None}


UNKNOWN_MACHINE = "unknown machine"
CERTIFICATE_REVOKED = "certificate revoked"


@runtime_checkable
class AgentStore(Protocol):
    # machines
    async def get_machine(self, machine_id: str) -> AgentMachine | None: ...

    # bootstrap tokens (one per machine, spent or not: saving a new one replaces the old one)
    async def save_bootstrap_token(self, token: BootstrapToken) -> None: ...
    async def get_bootstrap_token(self, machine_id: str) -> BootstrapToken | None: ...
    async def spend_bootstrap_token(
        self, machine_id: str, token_hash: str, spent: SpentToken
    ) -> bool:
        """Mark the machine's token spent if it is still the unspent one with ``token_hash``.
        Returns whether it was (atomic compare-and-set: of concurrent calls, one wins)."""
        ...

    async def delete_bootstrap_token(self, machine_id: str, token_hash: str | None = None) -> bool:
        """Delete the machine's token; if ``token_hash`` is given, only when it still matches.
        Returns whether a token was deleted (atomic compare-and-delete)."""
        ...

    # what the agent reports
    async def record_discovered_inventory(self, machine_id: str, inventory: dict[str, Any]) -> None:
        """Inventory sent by the agent of a machine not yet accepted (no session, no state)."""
        ...

    async def record_event(
        self, machine_id: str, kind: EventKind, message: str, data: dict[str, Any]
    ) -> None:
        """An event on the machine's timeline (actor ``agent-api``)."""
        ...

    async def record_certificate(
        self, machine_id: str, cert: IssuedCertificate, *, renewal: bool = False
    ) -> None:
        """``cert`` becomes the machine's accepted certificate. Enrollment (``renewal`` False)
        revokes every earlier one; a renewal keeps the renewed-from one accepted until
        :meth:`certificate_accepted` sees the new one."""
        ...

    async def certificate_accepted(self, machine_id: str, serial: int) -> bool:
        """Whether a client certificate with ``serial`` may open the machine's session
        (:mod:`server.agents.revocation`)."""
        ...

    async def accepted_certificates(self, machine_ids: Sequence[str]) -> dict[str, set[int]]:
        """The serials each machine's sessions may use (a machine unknown now is left out)."""
        ...

    async def certificates_generation(self) -> int | None:
        """A counter that changes whenever a certificate may have stopped being accepted, for
        any machine: a revocation, an enrollment, a renewed-from serial dropped, a machine
        deleted. ``None``: not known (the caller checks every session). Read it *before*
        :meth:`accepted_certificates`, so a change in between is seen next time."""
        ...

    async def session_refusal(self, machine_id: str, serial: int | None) -> str:
        """Why the machine's session may not open ("unknown machine", "certificate revoked"),
        or "" when it may: :meth:`get_machine` and :meth:`certificate_accepted` in one read
        (``serial`` None: no certificate to check)."""
        ...

    async def record_hello(self, machine_id: str, hello: AgentHello) -> None: ...
    async def record_seen(self, seen: Mapping[str, dt.datetime]) -> None:
        """Batched last-heartbeat times (called every few seconds, not per heartbeat)."""
        ...

    async def record_applied_config(self, machine_id: str, version: str) -> None: ...
    async def record_command_result(self, machine_id: str, outcome: CommandOutcome) -> None: ...
    async def record_disconnected(self, machine_id: str, at: dt.datetime) -> None: ...

    # desired config (rendered by server.config; the store only returns it)
    async def get_desired_config(self, machine_id: str) -> DesiredConfig | None: ...

    # pending commands (persisted so a server restart or a cut loses none)
    async def save_pending_command(self, machine_id: str, cmd: PendingCommand) -> None:
        """Save ``cmd``; an ``apply_config`` replaces the machine's pending ``apply_config``."""
        ...

    async def delete_pending_command(self, machine_id: str, command_id: str) -> None: ...
    async def list_pending_commands(self, machine_id: str) -> list[PendingCommand]:
        """Oldest first."""
        ...

    async def list_pending_since(
        self, since: dt.datetime, *, excluding: str | None = None
    ) -> list[tuple[str, str]]:
        """``(machine_id, command_id)`` of every pending command created at or after ``since``
        (by any server replica): how a replica learns of commands for the agents it holds.
        ``excluding``: leave out the commands saved by that hub (``saved_by``); those with no
        ``saved_by`` are always listed."""
        ...


@dataclass
class MemoryAgentStore:
    """In-memory :class:`AgentStore` for tests and benchmarks (plus a few test helpers)."""

    machines: dict[str, AgentMachine] = field(default_factory=dict)
    tokens: dict[str, BootstrapToken] = field(default_factory=dict)
    certificates: dict[str, list[IssuedCertificate]] = field(default_factory=dict)
    accepted: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    """machine -> (current serial, renewed-from serial), decimal strings."""
    hellos: dict[str, AgentHello] = field(default_factory=dict)
    seen: dict[str, dt.datetime] = field(default_factory=dict)
    applied: dict[str, str] = field(default_factory=dict)
    results: dict[str, list[CommandOutcome]] = field(default_factory=dict)
    desired: dict[str, DesiredConfig] = field(default_factory=dict)
    pending: dict[str, dict[str, PendingCommand]] = field(default_factory=dict)
    disconnected: dict[str, dt.datetime] = field(default_factory=dict)
    discovered_inventory: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    generation: int = 0
    """:meth:`certificates_generation`: bumped whenever an accepted serial is dropped."""
    _by_saver: dict[str | None, dict[str, tuple[str, dt.datetime]]] = field(
        default_factory=dict, repr=False
    )
    """``pending`` by ``saved_by``: command id -> (machine id, created at), so that
    :meth:`list_pending_since` walks only the other savers' commands (a fleet push leaves one
    per machine, all saved by the one hub that polls)."""

    def add_machine(
        self, machine_id: str, *, enrollment_allowed: bool = True, accepted: bool = True
    ) -> None:
        self.machines[machine_id] = AgentMachine(machine_id, enrollment_allowed, accepted)

    async def record_discovered_inventory(self, machine_id: str, inventory: dict[str, Any]) -> None:
        self.discovered_inventory[machine_id] = inventory

    async def record_event(
        self, machine_id: str, kind: EventKind, message: str, data: dict[str, Any]
    ) -> None:
        self.events.append((machine_id, kind, message, data))

    async def get_machine(self, machine_id: str) -> AgentMachine | None:
        return self.machines.get(machine_id)

    async def save_bootstrap_token(self, token: BootstrapToken) -> None:
        self.tokens[token.machine_id] = token

    async def get_bootstrap_token(self, machine_id: str) -> BootstrapToken | None:
        return self.tokens.get(machine_id)

    async def spend_bootstrap_token(
        self, machine_id: str, token_hash: str, spent: SpentToken
    ) -> bool:
        tok = self.tokens.get(machine_id)
        if tok is None or tok.token_hash != token_hash or tok.spent is not None:
            return False
        self.tokens[machine_id] = replace(tok, spent=spent)
        return True

    async def delete_bootstrap_token(self, machine_id: str, token_hash: str | None = None) -> bool:
        tok = self.tokens.get(machine_id)
        if tok is None or (token_hash is not None and tok.token_hash != token_hash):
            return False
        del self.tokens[machine_id]
        return True

    async def record_certificate(
        self, machine_id: str, cert: IssuedCertificate, *, renewal: bool = False
    ) -> None:
        self.certificates.setdefault(machine_id, []).append(cert)
        old = self.accepted.get(machine_id, (None, None))
        new = (str(cert.serial), old[0] if renewal else None)
        self.accepted[machine_id] = new
        if set(old) - set(new) - {None}:
            self.generation += 1

    async def certificate_accepted(self, machine_id: str, serial: int) -> bool:
        current, previous = self.accepted.get(machine_id, (None, None))
        if str(serial) == current and previous is not None:
            self.accepted[machine_id] = (current, None)
            self.generation += 1
        return certificate_accepted(serial, current, previous)

    async def session_refusal(self, machine_id: str, serial: int | None) -> str:
        if machine_id not in self.machines:
            return UNKNOWN_MACHINE
        if serial is not None and not await self.certificate_accepted(machine_id, serial):
            return CERTIFICATE_REVOKED
        return ""

    async def accepted_certificates(self, machine_ids: Sequence[str]) -> dict[str, set[int]]:
        return {
            mid: {int(x) for x in self.accepted.get(mid, ()) if x}
            for mid in machine_ids
            if mid in self.machines
        }

    async def certificates_generation(self) -> int | None:
        return self.generation

    def revoke(self, machine_id: str) -> None:
        """Test helper: forget the machine's accepted certificates."""
        self.accepted.pop(machine_id, None)
        self.generation += 1

    async def record_hello(self, machine_id: str, hello: AgentHello) -> None:
        self.hellos[machine_id] = hello
        self.applied[machine_id] = hello.config_version  # as the database store does

    async def record_seen(self, seen: Mapping[str, dt.datetime]) -> None:
        self.seen.update(seen)

    async def record_applied_config(self, machine_id: str, version: str) -> None:
        self.applied[machine_id] = version

    async def record_command_result(self, machine_id: str, outcome: CommandOutcome) -> None:
        self.results.setdefault(machine_id, []).append(outcome)

    async def record_disconnected(self, machine_id: str, at: dt.datetime) -> None:
        self.disconnected[machine_id] = at

    async def get_desired_config(self, machine_id: str) -> DesiredConfig | None:
        return self.desired.get(machine_id)

    async def save_pending_command(self, machine_id: str, cmd: PendingCommand) -> None:
        mine = self.pending.setdefault(machine_id, {})
        if cmd.kind == "apply_config":
            for cid in [c.command_id for c in mine.values() if c.kind == "apply_config"]:
                self._drop_pending(machine_id, cid)
        self._drop_pending(machine_id, cmd.command_id)
        mine[cmd.command_id] = cmd
        self._by_saver.setdefault(cmd.saved_by, {})[cmd.command_id] = (machine_id, cmd.created_at)

    def _drop_pending(self, machine_id: str, command_id: str) -> None:
        old = self.pending.get(machine_id, {}).pop(command_id, None)
        if old is not None:
            self._by_saver.get(old.saved_by, {}).pop(command_id, None)

    async def delete_pending_command(self, machine_id: str, command_id: str) -> None:
        self._drop_pending(machine_id, command_id)

    async def list_pending_commands(self, machine_id: str) -> list[PendingCommand]:
        return sorted(self.pending.get(machine_id, {}).values(), key=lambda c: c.created_at)

    async def list_pending_since(
        self, since: dt.datetime, *, excluding: str | None = None
    ) -> list[tuple[str, str]]:
        return [
            (mid, cid)
            for saver, cmds in self._by_saver.items()
            if saver is None or saver != excluding
            for cid, (mid, at) in cmds.items()
            if at >= since
        ]
