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
nothing about which machines exist or which tokens were close.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable

from server.agents.store import AgentStore, BootstrapToken

log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL = dt.timedelta(minutes=30)
DENIED_MESSAGE = "enrollment denied"


class EnrollmentDenied(Exception):
    """Enrollment refused. Always the same message, whatever the reason (gRPC UNAUTHENTICATED)."""

    def __init__(self) -> None:
        super().__init__(DENIED_MESSAGE)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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

    async def wipe(self, machine_id: str) -> None:
        """Forget the machine's token (power-off, reprovision, delete)."""
        await self._store.delete_bootstrap_token(machine_id)

    async def redeem(self, machine_id: str, token: str) -> BootstrapToken:
        """Consume ``token`` for ``machine_id`` or raise :class:`EnrollmentDenied`."""
        presented = hash_token(token)
        machine = await self._store.get_machine(machine_id) if machine_id else None
        stored = await self._store.get_bootstrap_token(machine_id) if machine else None
        # Compare even when there is nothing to compare with, so timing says little.
        expected = stored.token_hash if stored else hash_token("\x00no-token")
        good = hmac.compare_digest(presented.encode(), expected.encode())
        if not (machine and stored and good and machine.enrollment_allowed):
            raise EnrollmentDenied()
        if stored.expires_at <= self._now():
            await self._store.delete_bootstrap_token(machine_id, stored.token_hash)
            raise EnrollmentDenied()
        if not await self._store.delete_bootstrap_token(machine_id, stored.token_hash):
            raise EnrollmentDenied()  # lost a race with another enrollment: used once already
        return stored
