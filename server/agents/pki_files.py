"""The fleet PKI on disk: a server certificate that survives restarts, CA rotation, expiry.

The PKI directory (``<data_dir>/pki``) holds

* ``ca.key`` (0600) / ``ca.crt`` — the **signing** fleet CA (``server.agents.pki.FleetCA``);
* ``ca-previous.crt`` — during a rotation, the previous CA: still *trusted*, no longer signing;
* ``server.key`` (0600) / ``server.crt`` — the gRPC endpoints' server certificate.

**Server certificate.** It is kept across restarts and reissued only when
:func:`server_cert_reissue` says so: it is missing or unreadable, it expires within
:data:`EXPIRY_WINDOW`, its SANs differ from the configured names, or its issuer is no longer a
trusted CA. Reissuing at every start (as bronze once did) gave each restart a certificate whose
NotBefore was "now minus a little", which an agent whose clock lags cannot accept.

**CA rotation** without cutting off a connected fleet, in two steps (``bronze ca rotate`` /
``bronze ca retire-previous``, each followed by a server restart):

1. :func:`rotate_ca`: the current CA certificate becomes ``ca-previous.crt`` (its key is deleted)
   and a new CA is created. The server now signs with the new CA but trusts both, and keeps its
   server certificate (issued by the old CA, which every agent trusts). Agents receive the
   two-CA bundle at enrollment and at every renewal, so within one client-certificate lifetime
   (24 h) every connected agent trusts the new CA. Bake the bundle into new boot images.
2. :func:`retire_previous_ca` (after at least one client lifetime): the old CA leaves the trust
   bundle; at the next start the server certificate is reissued by the new CA.

**Expiry.** :func:`expiring` lists the signing CA and the server certificate when they expire
within :data:`EXPIRY_WINDOW`; ``/healthz`` reports them (component ``pki``) and the server writes
a ``pki.expiring`` event at start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from cryptography import x509

from server.agents.pki import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    PREVIOUS_CA_CERT_FILE,
    FleetCA,
    KeyPair,
    PkiError,
    key_to_pem,
    write_private,
)
from server.inventory.db import Database
from server.inventory.machines import record
from server.types import EventKind

log = logging.getLogger(__name__)

SERVER_KEY_FILE = "server.key"
SERVER_CERT_FILE = "server.crt"
EXPIRY_WINDOW = dt.timedelta(days=30)


class ReissueReason(StrEnum):
    """Why the server certificate on disk is not reused."""

    MISSING = "missing"
    """No certificate (first start) or it cannot be read."""
    EXPIRING = "expiring"
    """It expires within the expiry window (or is not valid yet)."""
    NAMES_CHANGED = "names_changed"
    """Its SANs are not the configured server names."""
    UNTRUSTED_ISSUER = "untrusted_issuer"
    """No CA in the trust bundle signed it (the CA was replaced or a rotation retired it)."""


def normalize_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def cert_hosts(cert: x509.Certificate) -> frozenset[str]:
    """The DNS names and IP addresses in ``cert``'s SAN extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    names = [normalize_host(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return frozenset(names)


def server_cert_reissue(
    cert: x509.Certificate | None,
    hosts: Sequence[str],
    *,
    issuer_trusted: bool,
    now: dt.datetime,
    window: dt.timedelta = EXPIRY_WINDOW,
) -> ReissueReason | None:
    """Whether (and why) the stored server certificate must be replaced; ``None``: reuse it."""
    if cert is None:
        return ReissueReason.MISSING
    if not issuer_trusted:
        return ReissueReason.UNTRUSTED_ISSUER
    if cert.not_valid_after_utc - window <= now or cert.not_valid_before_utc > now:
        return ReissueReason.EXPIRING
    if cert_hosts(cert) != frozenset(normalize_host(h) for h in hosts):
        return ReissueReason.NAMES_CHANGED
    return None


def _read_server_pair(directory: Path) -> tuple[KeyPair, x509.Certificate] | None:
    try:
        key_pem = (directory / SERVER_KEY_FILE).read_bytes()
        cert_pem = (directory / SERVER_CERT_FILE).read_bytes()
        return KeyPair(key_pem, cert_pem), x509.load_pem_x509_certificate(cert_pem)
    except (OSError, ValueError):
        return None


def load_or_issue_server_cert(ca: FleetCA, directory: Path, hosts: Sequence[str]) -> KeyPair:
    """The server key + certificate in ``directory``, reissued (and saved) only when needed."""
    found = _read_server_pair(directory)
    cert = found[1] if found else None
    trusted = cert is not None and ca.issuer_of(cert) is not None
    reason = server_cert_reissue(cert, hosts, issuer_trusted=trusted, now=ca.now())
    if found is not None and reason is None:
        return found[0]
    pair = ca.issue_server_cert(list(hosts))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(directory / SERVER_KEY_FILE, pair.key_pem)
    (directory / SERVER_CERT_FILE).write_bytes(pair.cert_pem)
    log.info("server certificate issued reason=%s hosts=%s", reason, ",".join(hosts))
    return pair


def rotate_ca(directory: Path) -> FleetCA:
    """Step 1 of a rotation: a new signing CA; the current one stays trusted (module docstring)."""
    if (directory / PREVIOUS_CA_CERT_FILE).exists():
        raise PkiError("a CA rotation is in progress: retire the previous CA first")
    if not (directory / CA_CERT_FILE).exists():
        raise PkiError(f"no fleet CA in {directory}")
    old = FleetCA.load_or_create(directory)
    new = FleetCA.create()
    (directory / PREVIOUS_CA_CERT_FILE).write_bytes(old.signer_pem)
    write_private(directory / CA_KEY_FILE, key_to_pem(new._key))
    (directory / CA_CERT_FILE).write_bytes(new.signer_pem)
    log.info("fleet CA rotated dir=%s: new CA signs, previous CA still trusted", directory)
    return FleetCA.load_or_create(directory)


def retire_previous_ca(directory: Path) -> bool:
    """Step 2 of a rotation: stop trusting the previous CA. True when there was one."""
    path = directory / PREVIOUS_CA_CERT_FILE
    if not path.exists():
        return False
    path.unlink()
    log.info("previous fleet CA retired dir=%s", directory)
    return True


class PkiItem(StrEnum):
    """A certificate the whole fleet depends on."""

    FLEET_CA = "fleet CA"
    """The signing fleet CA: every agent's trust and every client certificate hang on it."""
    SERVER_CERT = "server certificate"
    """The agent API's server certificate (both gRPC ports)."""


@dataclass(frozen=True)
class ExpiryWarning:
    """A certificate the fleet depends on that expires soon."""

    what: PkiItem
    not_after: dt.datetime

    def message(self, now: dt.datetime) -> str:
        days = max(0, (self.not_after - now).days)
        return f"{self.what} expires {self.not_after.isoformat()} (in {days} days)"


def expiring(
    ca_cert: x509.Certificate,
    server_cert: x509.Certificate | None,
    now: dt.datetime,
    window: dt.timedelta = EXPIRY_WINDOW,
) -> list[ExpiryWarning]:
    """The signing CA and the server certificate when they expire within ``window``."""
    found = [(PkiItem.FLEET_CA, ca_cert), (PkiItem.SERVER_CERT, server_cert)]
    return [
        ExpiryWarning(what, cert.not_valid_after_utc)
        for what, cert in found
        if cert is not None and cert.not_valid_after_utc - window <= now
    ]


class _ExpiryView(Protocol):
    def expiring(self) -> list[ExpiryWarning]: ...

    @property
    def ca(self) -> FleetCA: ...


def pki_health(api: _ExpiryView) -> str:
    """``/healthz`` component ``pki``: "ok" or "expiring: <what> expires <when> (in N days)"."""
    now = api.ca.now()
    found = api.expiring()
    return "expiring: " + "; ".join(w.message(now) for w in found) if found else "ok"


def record_pki_expiry(db: Database, api: _ExpiryView) -> None:
    """At start: a ``pki.expiring`` event (and a warning) per certificate about to expire."""
    now = api.ca.now()
    found = api.expiring()
    if not found:
        return
    with db.write() as s:
        for w in found:
            log.warning("pki expiring: %s", w.message(now))
            record(
                s,
                actor="server",
                kind=EventKind.PKI_EXPIRING,
                message=w.message(now),
                data={"what": w.what.value, "not_after": w.not_after.isoformat()},
            )
