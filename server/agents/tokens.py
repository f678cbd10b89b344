"""Bootstrap tokens: how a freshly booted machine proves it is the machine it claims to be.

When the boot plane renders a machine's boot script it calls :meth:`BootstrapTokens.issue`, which
returns a random secret placed on the kernel command line (``bronze.token=...``). The token is

* **short-lived** (minutes: long enough to boot, not to be reused later);
* **single-use**: :meth:`BootstrapTokens.redeem` compare-and-deletes it, so two racing enrollments
  with one token yield one certificate;
* **bound to one machine and one boot**: it is stored under the machine id and a new boot (a new
  ``issue``) replaces it; it is wiped when that boot ends (power-off, cycle, reset) or the
  machine is reprovisioned (``server/agents/token_wipe.py``, in the same transaction as the change);
* **stored hashed** (SHA-256; the secret has 256 bits of entropy, so no slow KDF is needed) and
  compared in constant time (``hmac.compare_digest``).

Every failure — unknown machine, wrong/expired/used token, a phase where enrollment is not
allowed — raises the same :class:`EnrollmentDenied` with the same message, so a caller learns
nothing about which machines exist or which tokens were close. Nor does the *time* it takes:
:meth:`BootstrapTokens.verify` does the same work on every path — it always looks up the machine
*and* its token (also for an unknown id), always hashes the presented token and always runs one
constant-time comparison (against a dummy hash when there is nothing stored), and decides only
after all of it.

Verification and consumption are two steps: ``Enroll`` verifies, and consumes the token only
when it will issue a certificate. A machine still in phase ``discovered`` (not accepted by an
operator) keeps its token: its agent retries with the same token until the machine is accepted
or the token expires (``docs/agent.md``, "Discovered machines").

The boot plane calls :meth:`BootstrapTokens.issue_for_boot` (one token per rendered boot script)
and :meth:`BootstrapTokens.wipe_for_boot` (that boot's script could not be served).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from server.agents.store import AgentMachine, AgentStore, BootstrapToken

log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL = dt.timedelta(minutes=30)
DENIED_MESSAGE = "enrollment denied"


class EnrollmentDenied(Exception):
    """Enrollment refused. Always the same message, whatever the reason (gRPC UNAUTHENTICATED)."""

    def __init__(self) -> None:
        super().__init__(DENIED_MESSAGE)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenGrant:
    """A verified, not yet consumed, bootstrap token and the machine it was issued for."""

    machine: AgentMachine
    token: BootstrapToken


# What an absent token is compared with: the hash of a value no issued token can have.
_NO_TOKEN_HASH = hash_token("\x00no-token")
# Looked up instead of an empty machine id, so the empty id costs the same queries.
_NO_MACHINE_ID = "\x00none"


class BootstrapTokens:
    def __init__(
        self,
        store: AgentStore,
        *,
        ttl: dt.timedelta = DEFAULT_TOKEN_TTL,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self.ttl = ttl
        self._now = now

    async def issue(self, machine_id: str, boot_ref: str, ttl: dt.timedelta | None = None) -> str:
        """A new token for this machine's boot ``boot_ref``; any earlier token stops working."""
        token = secrets.token_urlsafe(32)
        await self._store.save_bootstrap_token(
            BootstrapToken(machine_id, hash_token(token), boot_ref, self._now() + (ttl or self.ttl))
        )
        log.info("bootstrap token issued machine=%s boot=%s", machine_id, boot_ref)
        return token

    async def issue_for_boot(
        self,
        machine_id: str,
        boot_ref: str,
        client_ip: str | None = None,
        ttl: dt.timedelta | None = None,
    ) -> str:
        """The token a boot script hands out: bound to ``machine_id`` and the boot ``boot_ref``
        (the boot plane's id of this render); replaces the machine's earlier token. ``client_ip``
        (the address that fetched the script) is logged, not enforced: an agent may enroll
        from another address than its firmware fetched the script from."""
        token = await self.issue(machine_id, boot_ref, ttl)
        log.info("boot token bound machine=%s boot=%s client=%s", machine_id, boot_ref, client_ip)
        return token

    async def wipe_for_boot(self, machine_id: str, boot_ref: str) -> bool:
        """Forget the machine's token only if it is still the one issued for ``boot_ref`` (a
        later boot's token is left alone). True when one was deleted."""
        stored = await self._store.get_bootstrap_token(machine_id)
        if stored is None or stored.boot_ref != boot_ref:
            return False
        return await self._store.delete_bootstrap_token(machine_id, stored.token_hash)

    async def wipe(self, machine_id: str) -> None:
        """Forget the machine's token (power-off, reprovision, delete)."""
        await self._store.delete_bootstrap_token(machine_id)

    async def verify(self, machine_id: str, token: str) -> TokenGrant:
        """Check ``token`` for ``machine_id`` without consuming it, or raise
        :class:`EnrollmentDenied`. Same work whatever the outcome (module docstring)."""
        key = machine_id or _NO_MACHINE_ID
        presented = hash_token(token)
        machine = await self._store.get_machine(key)
        stored = await self._store.get_bootstrap_token(key)
        expected = stored.token_hash if stored is not None else _NO_TOKEN_HASH
        good = hmac.compare_digest(presented.encode(), expected.encode())
        fresh = stored is not None and stored.expires_at > self._now()
        if machine is None or stored is None or not (good and fresh and machine.enrollment_allowed):
            raise EnrollmentDenied()
        return TokenGrant(machine, stored)

    async def consume(self, grant: TokenGrant) -> None:
        """Delete the verified token (compare-and-delete): raises :class:`EnrollmentDenied` when
        another enrollment consumed it first."""
        t = grant.token
        if not await self._store.delete_bootstrap_token(t.machine_id, t.token_hash):
            raise EnrollmentDenied()

    async def redeem(self, machine_id: str, token: str) -> BootstrapToken:
        """Verify and consume ``token`` for ``machine_id`` or raise :class:`EnrollmentDenied`."""
        grant = await self.verify(machine_id, token)
        await self.consume(grant)
        return grant.token
