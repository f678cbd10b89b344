"""Pure decisions and unit-level checks of the trust hardening: server-certificate reuse, expiry,
trouble-report diagnosis and verification, and token verification doing equal work."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity import new_key_and_csr
from agent.trouble import report_payload as agent_payload
from server.agents import BootstrapTokens, EnrollmentDenied, MemoryAgentStore
from server.agents import tokens as tokens_mod
from server.agents.pki import FleetCA
from server.agents.pki_files import (
    ReissueReason,
    expiring,
    load_or_issue_server_cert,
    server_cert_reissue,
)
from server.agents.store import BootstrapToken, SpentToken
from server.agents.trouble import (
    Finding,
    ReportRejected,
    diagnose,
    report_payload,
    sign_report,
    verify_report,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)

# -- server certificate: reuse or reissue ---------------------------------------------------------


def _server_cert(ca: FleetCA, hosts: list[str], at: dt.datetime) -> x509.Certificate:
    issuer = FleetCA(ca._key, ca.cert, now=lambda: at)
    return x509.load_pem_x509_certificate(issuer.issue_server_cert(hosts).cert_pem)


CA = FleetCA.create()


@pytest.mark.parametrize(
    ("cert", "hosts", "trusted", "want"),
    [
        (None, ["127.0.0.1"], False, ReissueReason.MISSING),
        (_server_cert(CA, ["127.0.0.1"], NOW), ["127.0.0.1"], True, None),
        (
            _server_cert(CA, ["127.0.0.1"], NOW),
            ["127.0.0.1"],
            False,
            ReissueReason.UNTRUSTED_ISSUER,
        ),
        (
            _server_cert(CA, ["127.0.0.1"], NOW - 340 * D),
            ["127.0.0.1"],
            True,
            ReissueReason.EXPIRING,
        ),
        (_server_cert(CA, ["127.0.0.1"], NOW + 2 * D), ["127.0.0.1"], True, ReissueReason.EXPIRING),
        (
            _server_cert(CA, ["127.0.0.1"], NOW),
            ["127.0.0.1", "a.b"],
            True,
            ReissueReason.NAMES_CHANGED,
        ),
        (_server_cert(CA, ["A.example", "::1"], NOW), ["a.example", "0::1"], True, None),
    ],
    ids=[
        "missing",
        "reuse",
        "issuer-not-trusted",
        "expires-within-30-days",
        "not-yet-valid",
        "names-changed",
        "names-normalized",
    ],
)
def test_server_cert_reissue(cert, hosts, trusted, want):
    assert server_cert_reissue(cert, hosts, issuer_trusted=trusted, now=NOW) == want


def test_server_cert_kept_on_disk_until_names_change(tmp_path):
    ca = FleetCA.load_or_create(tmp_path)
    first = load_or_issue_server_cert(ca, tmp_path, ["127.0.0.1"])
    assert load_or_issue_server_cert(ca, tmp_path, ["127.0.0.1"]) == first
    cert = x509.load_pem_x509_certificate(first.cert_pem)
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC) - 23 * H  # backdated a day
    assert load_or_issue_server_cert(ca, tmp_path, ["127.0.0.1", "x.test"]) != first


@pytest.mark.parametrize(
    ("ca_days", "server_days", "want"),
    [
        (3650, 365, []),
        (20, 365, ["fleet CA"]),
        (3650, 29, ["server certificate"]),
        (10, 10, ["fleet CA", "server certificate"]),
    ],
    ids=["healthy", "ca-expiring", "server-cert-expiring", "both"],
)
def test_expiring(ca_days, server_days, want):
    ca = FleetCA.create(lifetime=dt.timedelta(days=ca_days))
    now = dt.datetime.now(dt.UTC)
    server = _server_cert(ca, ["127.0.0.1"], now - dt.timedelta(days=365 - server_days))
    assert [w.what for w in expiring(ca.cert, server, now)] == want


# -- trouble reports ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent_offset", "nb", "na", "want"),
    [
        (dt.timedelta(0), NOW - H, NOW + H, []),
        (dt.timedelta(seconds=90), NOW - H, NOW + H, []),
        (3 * D, NOW - H, NOW + H, [Finding.CLOCK_AHEAD]),
        (-10 * dt.timedelta(minutes=1), NOW - H, NOW + H, [Finding.CLOCK_BEHIND]),
        (dt.timedelta(0), NOW - 2 * D, NOW - D, [Finding.CERT_EXPIRED]),
        (dt.timedelta(0), NOW + H, NOW + D, [Finding.CERT_NOT_YET_VALID]),
        (3 * D, NOW - 2 * D, NOW - D, [Finding.CLOCK_AHEAD, Finding.CERT_EXPIRED]),
    ],
    ids=[
        "all-fine",
        "skew-within-tolerance",
        "clock-ahead",
        "clock-behind",
        "cert-expired",
        "cert-not-yet-valid",
        "ahead-and-expired",
    ],
)
def test_diagnose(agent_offset, nb, na, want):
    assert diagnose(NOW, NOW + agent_offset, nb, na) == want


def _key_and_cert(ca: FleetCA, machine_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key_pem, csr = new_key_and_csr(machine_id)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, ca.sign_client_csr(csr, machine_id).cert_pem


def test_agent_and_server_sign_the_same_bytes():
    assert agent_payload("m1", 123, "x") == report_payload("m1", 123, "x")


def test_verify_report_accepts_an_expired_cert_of_the_machine_only():
    ca = FleetCA.create()
    old = FleetCA(ca._key, ca.cert, now=lambda: NOW - 30 * D)  # certificate long expired
    key, cert = _key_and_cert(old, "m1")
    sig = sign_report(key, report_payload("m1", 1000, "p"))
    rep = verify_report(ca, "m1", cert, 1000, "p", sig)
    assert rep.machine_id == "m1" and rep.agent_now.timestamp() == 1.0

    other_key, other_cert = _key_and_cert(FleetCA.create(), "m1")
    bad = [
        ("m2", cert, 1000, "p", sig),  # names another machine
        ("m1", cert, 1001, "p", sig),  # altered time
        ("m1", cert, 1000, "q", sig),  # altered problem
        ("m1", other_cert, 1000, "p", sign_report(other_key, report_payload("m1", 1000, "p"))),
        ("m1", b"junk", 1000, "p", sig),
    ]
    for args in bad:
        with pytest.raises(ReportRejected):
            verify_report(ca, *args)


# -- enrollment timing: every path does the same work --------------------------------------------


class RecordingStore(MemoryAgentStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def get_machine(self, machine_id: str) -> Any:
        self.calls.append("get_machine")
        return await super().get_machine(machine_id)

    async def get_bootstrap_token(self, machine_id: str) -> Any:
        self.calls.append("get_bootstrap_token")
        return await super().get_bootstrap_token(machine_id)


@pytest.mark.parametrize(
    "case",
    [
        "unknown-machine",
        "empty-id",
        "no-token",
        "wrong-token",
        "expired",
        "not-allowed",
        "good",
        "spent-other-key",
        "spent-past-grace",
        "spent-same-key",
    ],
)
def test_token_verify_does_the_same_work_on_every_path(case, monkeypatch):
    store = RecordingStore()
    t = BootstrapTokens(store)
    secret = asyncio.run(t.issue("m1", "b1"))
    store.add_machine("m1")
    store.add_machine("m2")  # known, no token
    store.add_machine("m3", enrollment_allowed=False)
    secret3 = asyncio.run(t.issue("m3", "b3"))
    compares: list[int] = []
    real_compare = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        compares.append(1)
        return real_compare(a, b)

    hashes: list[int] = []
    real_hash = tokens_mod.hash_token

    def counting_hash(token: str) -> str:
        hashes.append(1)
        return real_hash(token)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    monkeypatch.setattr(tokens_mod, "hash_token", counting_hash)
    machine, token = {
        "unknown-machine": ("nope", secret),
        "empty-id": ("", secret),
        "no-token": ("m2", secret),
        "wrong-token": ("m1", "x" * len(secret)),
        "expired": ("m1", secret),
        "not-allowed": ("m3", secret3),
        "good": ("m1", secret),
    }.get(case, ("m1", secret))
    now = dt.datetime.now(dt.UTC)
    if case == "expired":
        store.tokens["m1"] = BootstrapToken("m1", real_hash(secret), "b1", now - D)
    if case.startswith("spent"):  # spent by the enrollment of key "k...", a minute ago
        ago = t.grace if case == "spent-past-grace" else dt.timedelta(minutes=1)
        spent = SpentToken(now - ago, "k" * 64, "C")
        store.tokens["m1"] = replace(store.tokens["m1"], spent=spent)
    store.calls.clear()
    key = "j" * 64 if case == "spent-other-key" else "k" * 64
    if case in ("good", "spent-same-key"):
        assert asyncio.run(t.verify(machine, token, key_sha256=key)).machine.machine_id == "m1"
    else:
        with pytest.raises(EnrollmentDenied):
            asyncio.run(t.verify(machine, token, key_sha256=key))
    assert store.calls == ["get_machine", "get_bootstrap_token"]
    assert len(compares) == 2 and len(hashes) == 1  # the token, and the key
    assert "m1" in store.tokens or case == "expired"  # verify never consumes
