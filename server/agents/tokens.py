"""Bootstrap tokens: how a freshly booted machine proves it is the machine it claims to be.

When the boot plane renders a machine's boot script it calls :meth:`BootstrapTokens.issue`, which
returns a random secret placed on the kernel command line (``bronze.token=...``). The token is

* **short-lived** (minutes: long enough to boot, not to be reused later);
* **single-use**: :meth:`BootstrapTokens.consume` marks it spent (compare-and-set), so two racing
  enrollments with one token yield one certificate. A spent token enrolls nothing new; for a
  short grace window (``grace``, ``BRONZE_AGENT_ENROLL_GRACE``) it lets the *same* enrollment be
  asked again: a retry that presents the same token and a CSR for the same public key gets the
  certificate the first call issued (its answer was lost on the way), see ``docs/agent.md``;
* **bound to one machine and one boot**: it is stored under the machine id and a new boot (a new
  ``issue``) replaces it; a token from ``/boot.ipxe`` (``issue_bound``) is also bound to the
  address DHCP gave the machine and is redeemable only from that address (``redeem(peer=)``),
  and a second fetch of the same boot's script gets the same token back; it is wiped when that
  boot ends (power-off, cycle, reset) or the
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
import ipaddress
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from server.agents.store import AgentMachine, AgentStore, BootstrapToken, SpentToken

log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL = dt.timedelta(minutes=30)
DEFAULT_ENROLL_GRACE = dt.timedelta(minutes=10)
DENIED_MESSAGE = "enrollment denied"


class EnrollmentDenied(Exception):
    """Enrollment refused. Always the same message to the agent, whatever the reason (gRPC
    UNAUTHENTICATED); ``reason`` is for the operator's event only."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(DENIED_MESSAGE)
        self.reason = reason


def _why(machine: bool, stored: BootstrapToken | None, good: bool, usable: bool) -> str:
    if not machine:
        return "unknown machine"
    if stored is None:
        return "no valid token: never issued, wiped, or replaced"
    if not good:
        return "wrong token"
    if not usable and stored.spent is not None:
        return "token already used (by another key, or its grace window is over)"
    if not usable:
        return "token expired"
    return "machine not in an enrollment phase"


def key_fingerprint(csr: x509.CertificateSigningRequest) -> str:
    """Hex SHA-256 of the CSR's public key (DER SubjectPublicKeyInfo): what a retry of an
    enrollment must present again."""
    der = csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenGrant:
    """A verified bootstrap token and the machine it was issued for: unspent, or spent by an
    enrollment with the presented key within the grace window (``token.spent``: a retry)."""

    machine: AgentMachine
    token: BootstrapToken


# What an absent token is compared with: the hash of a value no issued token can have.
_NO_TOKEN_HASH = hash_token("\x00no-token")
# What a presented key is compared with when no enrollment spent the token: no key's hash.
_NO_KEY = "-" * 64
# Looked up instead of an empty machine id, so the empty id costs the same queries.
_NO_MACHINE_ID = "\x00none"


# -- tokens bound to one boot and one address (``/boot.ipxe``, docs/boot.md) --------------------
# The boot_ref of such a token is ``BOOT@ADDRESS#NONCE``; the token is HMAC(key, machine, ref),
# so the boot plane can hand the same token out again for the same boot without storing it.


def bound_ref(boot: str, address: str, nonce: str) -> str:
    return f"{boot}@{address}#{nonce}"


def bound_address(boot_ref: str) -> str | None:
    """The address a token is redeemable from, None for an unbound token (manual issue)."""
    if "@" not in boot_ref or "#" not in boot_ref:
        return None
    return boot_ref.split("@", 1)[1].rsplit("#", 1)[0]


def derive_token(key: bytes, machine_id: str, boot_ref: str) -> str:
    mac = hmac.new(key, f"{machine_id}\x00{boot_ref}".encode(), hashlib.sha256)
    return mac.hexdigest()


def peer_ip(peer: str | None) -> str | None:
    """The IP of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``), None if another kind."""
    if not peer or ":" not in peer:
        return None
    family, rest = peer.split(":", 1)
    if family not in ("ipv4", "ipv6"):
        return None
    host = rest.rsplit(":", 1)[0].replace("%5B", "[").replace("%5D", "]").strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class BootstrapTokens:
    def __init__(
        self,
        store: AgentStore,
        *,
        ttl: dt.timedelta = DEFAULT_TOKEN_TTL,
        grace: dt.timedelta = DEFAULT_ENROLL_GRACE,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self.ttl = ttl
        self.grace = grace
        """How long after an enrollment spent a token a retry of it is answered again."""
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

    async def issue_bound(
        self, machine_id: str, boot: str, address: str, ttl: dt.timedelta, key: bytes
    ) -> str:
        """The token of boot ``boot`` redeemable only from ``address``: the one already issued for
        that boot and address while it is unused and unexpired, else a new one (which replaces
        any other). Callers serialise calls per machine."""
        stored = await self._store.get_bootstrap_token(machine_id)
        prefix = f"{boot}@{address}#"
        if stored is not None and stored.spent is None and stored.boot_ref.startswith(prefix):
            token = derive_token(key, machine_id, stored.boot_ref)
            if stored.expires_at > self._now() and hmac.compare_digest(
                hash_token(token), stored.token_hash
            ):
                return token
        ref = bound_ref(boot, address, secrets.token_hex(8))
        token = derive_token(key, machine_id, ref)
        expires = self._now() + ttl
        await self._store.save_bootstrap_token(
            BootstrapToken(machine_id, hash_token(token), ref, expires)
        )
        log.info("bootstrap token issued machine=%s boot=%s address=%s", machine_id, boot, address)
        return token

    async def wipe(self, machine_id: str) -> None:
        """Forget the machine's token (power-off, reprovision, delete)."""
        await self._store.delete_bootstrap_token(machine_id)

    async def verify(
        self, machine_id: str, token: str, peer: str | None = None, key_sha256: str = ""
    ) -> TokenGrant:
        """Check ``token`` for ``machine_id`` without consuming it, or raise
        :class:`EnrollmentDenied`. Same work whatever the outcome (module docstring). A token
        bound to an address (``issue_bound``) is good only from a ``peer`` with that IP. A spent
        token is good only for a retry of the enrollment that spent it: the same ``key_sha256``
        (:func:`key_fingerprint`), within ``grace`` of its spending."""
        key = machine_id or _NO_MACHINE_ID
        presented = hash_token(token)
        machine = await self._store.get_machine(key)
        stored = await self._store.get_bootstrap_token(key)
        expected = stored.token_hash if stored is not None else _NO_TOKEN_HASH
        good = hmac.compare_digest(presented.encode(), expected.encode())
        usable = self._usable(stored, key_sha256)
        allowed = machine is not None and machine.enrollment_allowed
        if machine is None or stored is None or not (good and usable and allowed):
            raise EnrollmentDenied(_why(machine is not None, stored, good, usable))
        bound = bound_address(stored.boot_ref)
        if bound is not None and bound != peer:
            log.warning("bootstrap token presented from another address machine=%s", machine_id)
            raise EnrollmentDenied("token bound to another address")
        return TokenGrant(machine, stored)

    def _usable(self, stored: BootstrapToken | None, key_sha256: str) -> bool:
        """Unspent and unexpired, or spent by the key ``key_sha256`` less than ``grace`` ago.
        The key is compared (in constant time) on every path, spent token or not."""
        spent = stored.spent if stored is not None else None
        same_key = hmac.compare_digest(
            (spent.key_sha256 if spent is not None else _NO_KEY).encode(), key_sha256.encode()
        )
        now = self._now()
        if stored is None or spent is None:
            return stored is not None and stored.expires_at > now
        return bool(key_sha256) and same_key and now < spent.at + self.grace

    async def consume(self, grant: TokenGrant, key_sha256: str = "", cert_pem: str = "") -> None:
        """Mark the verified token spent by the enrollment of key ``key_sha256`` that issued
        ``cert_pem`` (compare-and-set): raises :class:`EnrollmentDenied` when another enrollment
        spent it first."""
        t = grant.token
        spent = SpentToken(self._now(), key_sha256, cert_pem)
        if not await self._store.spend_bootstrap_token(t.machine_id, t.token_hash, spent):
            raise EnrollmentDenied("token spent by a concurrent enrollment")

    async def redeem(self, machine_id: str, token: str, peer: str | None = None) -> BootstrapToken:
        """Verify and consume ``token`` for ``machine_id`` or raise :class:`EnrollmentDenied`
        (no key: a spent token is never good again)."""
        grant = await self.verify(machine_id, token, peer)
        await self.consume(grant)
        return grant.token
