"""Trouble reports: how the operator learns that an agent's clock or certificate is wrong.

A TLS handshake refused because a certificate is expired or not yet valid happens inside grpcio's
TLS stack: the server application never sees it (grpcio has no hook for a failed handshake), and
the agent only sees ``UNAVAILABLE``. Left alone, such a machine just shows ``connected: false``.

So the agent reports it. When it has a certificate but cannot hold a session, or when its own
clock says its certificate is expired or not yet valid, it calls ``Enrollment.ReportTrouble`` on
the enrollment port (server-authenticated TLS only, so an expired client certificate does not
stop the report) with its certificate, its clock and a signature by its private key. The server

* verifies the report (:func:`verify_report`): the certificate was issued by a trusted fleet CA
  (its validity dates are deliberately *not* checked), its CN is the reported machine id and the
  signature verifies with its key — a report cannot be forged for another machine;
* compares the agent's clock with its own and the certificate's dates with its own clock
  (:func:`diagnose`, a pure function): findings ``clock_ahead``/``clock_behind`` ("clock skew"),
  ``certificate_expired``, ``certificate_not_yet_valid``;
* logs the findings with the peer address and the machine, and writes an ``agent.trouble`` event
  on the machine (at most once per :data:`EVENT_INTERVAL` for the same findings);
* answers with its own time, so the agent judges its certificates by the server's clock from
  then on (no renewal storm from an agent whose clock runs days ahead).

A replayed report only repeats what the machine once said (rate-limited); it confers nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.agents.pki import FleetCA

SKEW_TOLERANCE = dt.timedelta(minutes=2)
EVENT_INTERVAL = dt.timedelta(minutes=10)
MAX_PROBLEM_CHARS = 200


class Finding(StrEnum):
    """What is wrong with an agent's clock or certificate, judged by the server's clock."""

    CLOCK_AHEAD = "clock_ahead"
    """Clock skew: the agent's clock is ahead of the server's by more than the tolerance."""
    CLOCK_BEHIND = "clock_behind"
    """Clock skew: the agent's clock is behind the server's by more than the tolerance."""
    CERT_EXPIRED = "certificate_expired"
    """The agent's client certificate is expired: its TLS handshakes are refused."""
    CERT_NOT_YET_VALID = "certificate_not_yet_valid"
    """The agent's client certificate is not valid yet: its TLS handshakes are refused."""


WORDS = {
    Finding.CLOCK_AHEAD: "clock skew: agent clock ahead by {skew}",
    Finding.CLOCK_BEHIND: "clock skew: agent clock behind by {skew}",
    Finding.CERT_EXPIRED: "client certificate expired at {not_after} (handshakes refused)",
    Finding.CERT_NOT_YET_VALID: "certificate not yet valid until {not_before} (handshakes refused)",
}


def diagnose(
    server_now: dt.datetime,
    agent_now: dt.datetime,
    not_before: dt.datetime,
    not_after: dt.datetime,
    tolerance: dt.timedelta = SKEW_TOLERANCE,
) -> list[Finding]:
    """Findings about a clock and a certificate, by the server's clock (pure)."""
    found: list[Finding] = []
    skew = agent_now - server_now
    if skew > tolerance:
        found.append(Finding.CLOCK_AHEAD)
    elif skew < -tolerance:
        found.append(Finding.CLOCK_BEHIND)
    if not_after <= server_now:
        found.append(Finding.CERT_EXPIRED)
    elif not_before > server_now:
        found.append(Finding.CERT_NOT_YET_VALID)
    return found


def describe(
    findings: list[Finding], skew: dt.timedelta, not_before: dt.datetime, not_after: dt.datetime
) -> str:
    size = abs(int(skew.total_seconds()))
    values = {
        "skew": f"{size} s",
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
    }
    return "; ".join(WORDS[f].format(**values) for f in findings)


def report_payload(machine_id: str, agent_time_ms: int, problem: str) -> bytes:
    """The bytes an agent signs (and the server verifies) for a trouble report."""
    return b"\0".join(
        [b"bronze-trouble-v1", machine_id.encode(), str(agent_time_ms).encode(), problem.encode()]
    )


def sign_report(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    return key.sign(payload, ec.ECDSA(hashes.SHA256()))


class ReportRejected(Exception):
    """A trouble report that does not prove it comes from the machine it names."""


@dataclass(frozen=True)
class VerifiedReport:
    machine_id: str
    cert: x509.Certificate
    agent_now: dt.datetime


def verify_report(
    ca: FleetCA, machine_id: str, cert_pem: bytes, agent_time_ms: int, problem: str, sig: bytes
) -> VerifiedReport:
    """Check the report's certificate chain (not its dates), CN and signature."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ReportRejected("malformed certificate") from None
    if ca.issuer_of(cert) is None:
        raise ReportRejected("certificate not issued by the fleet CA")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not machine_id or len(cns) != 1 or cns[0].value != machine_id:
        raise ReportRejected("certificate does not name the machine")
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise ReportRejected("certificate key type not supported")
    try:
        pub.verify(
            sig, report_payload(machine_id, agent_time_ms, problem), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise ReportRejected("bad signature") from None
    try:
        agent_now = dt.datetime.fromtimestamp(agent_time_ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise ReportRejected("agent time out of range") from None
    return VerifiedReport(machine_id, cert, agent_now)


class ReportLimiter:
    """At most one event per machine and set of findings per :data:`EVENT_INTERVAL`."""

    def __init__(self, interval: dt.timedelta = EVENT_INTERVAL, limit: int = 10_000) -> None:
        self._interval = interval
        self._limit = limit
        self._last: dict[tuple[str, tuple[Finding, ...]], dt.datetime] = {}

    def allow(self, machine_id: str, findings: list[Finding], now: dt.datetime) -> bool:
        key = (machine_id, tuple(findings))
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if len(self._last) >= self._limit:
            self._last.clear()
        self._last[key] = now
        return True
