"""Fleet PKI and bootstrap tokens (unit level; the gRPC-level refusals are in test_session)."""

import asyncio
import datetime as dt
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.identity import new_key_and_csr
from server.agents import BootstrapTokens, EnrollmentDenied, MemoryAgentStore
from server.agents.pki import FleetCA, PkiError
from server.agents.tokens import DENIED_MESSAGE, hash_token
from tests.support.clock import FakeClock


def test_ca_created_once_with_private_key_0600(tmp_path):
    ca = FleetCA.load_or_create(tmp_path / "ca")
    mode = stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode)
    assert mode == 0o600
    again = FleetCA.load_or_create(tmp_path / "ca")
    assert again.cert == ca.cert
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca


def test_supplied_ca_must_match_its_key(tmp_path):
    a, b = FleetCA.create(), FleetCA.create()
    from server.agents.pki import key_to_pem

    with pytest.raises(PkiError):
        FleetCA.from_pem(key_to_pem(a._key), b.cert_pem)
    assert FleetCA.from_pem(key_to_pem(a._key), a.cert_pem).cert == a.cert


def test_server_cert_sans():
    ca = FleetCA.create()
    pair = ca.issue_server_cert(["127.0.0.1", "bronze.example.net"])
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["bronze.example.net"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_cert_identity_lifetime_backdate():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    ca = FleetCA.create()
    ca._now = lambda: now
    _, csr = new_key_and_csr("evil-other-machine")  # what the CSR asks for is ignored
    issued = ca.sign_client_csr(csr, "m-42")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "m-42"
    assert cert.not_valid_before_utc == now - dt.timedelta(hours=24)
    assert cert.not_valid_after_utc == now + dt.timedelta(hours=24)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.issuer == ca.cert.subject


def test_malformed_csr_refused():
    with pytest.raises(PkiError):
        FleetCA.create().sign_client_csr(b"not a csr", "m")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def tokens():
    store = MemoryAgentStore()
    store.add_machine("m1")
    store.add_machine("m2")
    store.add_machine("locked", enrollment_allowed=False)
    clock = FakeClock()
    return store, clock, BootstrapTokens(store, ttl=dt.timedelta(minutes=10), now=clock)


def test_token_single_use_and_stored_hashed(tokens):
    store, _, t = tokens
    secret = run(t.issue("m1", "boot-1"))
    assert store.tokens["m1"].token_hash == hash_token(secret)
    assert secret not in repr(store.tokens)
    assert run(t.redeem("m1", secret)).boot_ref == "boot-1"
    with pytest.raises(EnrollmentDenied):
        run(t.redeem("m1", secret))


@pytest.mark.parametrize(
    "case",
    [
        "unknown-machine",
        "wrong-token",
        "other-machines-token",
        "expired",
        "wrong-phase",
        "superseded-by-new-boot",
        "wiped",
        "empty",
    ],
)
def test_token_refusals_are_indistinguishable(tokens, case):
    store, clock, t = tokens
    s1 = run(t.issue("m1", "boot-1"))
    s2 = run(t.issue("m2", "boot-1"))
    mid, secret = "m1", s1
    if case == "unknown-machine":
        mid = "nope"
    elif case == "wrong-token":
        secret = s1[:-2] + "xx"
    elif case == "other-machines-token":
        secret = s2
    elif case == "expired":
        clock.t += dt.timedelta(minutes=11)
    elif case == "wrong-phase":
        mid = "locked"
        store.tokens["locked"] = store.tokens["m1"].__class__(
            "locked", hash_token("t"), "b", clock.t + dt.timedelta(minutes=5)
        )
        secret = "t"  # noqa: S105 - test token
    elif case == "superseded-by-new-boot":
        run(t.issue("m1", "boot-2"))
    elif case == "wiped":
        run(t.wipe("m1"))
    elif case == "empty":
        mid, secret = "", ""
    with pytest.raises(EnrollmentDenied) as ei:
        run(t.redeem(mid, secret))
    assert str(ei.value) == DENIED_MESSAGE


def test_concurrent_redeems_yield_one_success(tokens):
    _, _, t = tokens
    secret = run(t.issue("m1", "b"))

    async def both():
        return await asyncio.gather(
            t.redeem("m1", secret), t.redeem("m1", secret), return_exceptions=True
        )

    results = run(both())
    assert sum(not isinstance(r, Exception) for r in results) == 1


def test_agent_renews_after_two_thirds_of_validity():
    from agent.identity import Credentials

    ca = FleetCA.create(client_lifetime=dt.timedelta(hours=24))
    key, csr = new_key_and_csr("m")
    issued = ca.sign_client_csr(csr, "m")
    creds = Credentials(key, issued.cert_pem, ca.cert_pem)
    nb, na = creds.not_before(), creds.not_after()
    assert not creds.should_renew(nb + (na - nb) * 0.6)
    assert creds.should_renew(nb + (na - nb) * 0.7)
    assert creds.valid(na - dt.timedelta(minutes=5))
    assert not creds.valid(na)
