"""Faults against real sockets and real peers: silence, 5xx, wrong credentials,
redirects, TLS trust, probing, and the stock (1-11 s) emulator delay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmc import (
    BmcAuthError,
    BmcConnectionError,
    BmcController,
    BmcEndpoint,
    BmcRedirectRefused,
    BmcTimeoutError,
    BmcTlsError,
    BmcTransientError,
    BmcUnsupportedError,
    DriverKind,
    DriverTimeouts,
    PowerAction,
    PowerPolicy,
    PowerState,
    probe,
)
from bmc.actions import default_driver_factory
from tests.peers import bmc_peers as peers
from tests.support.bmc import FAST, endpoint_for, start_peer

SHORT = DriverTimeouts(connect=0.5, read=0.5)


def counting_controller(
    policy: PowerPolicy = FAST, timeouts: DriverTimeouts = SHORT
) -> tuple[BmcController, list[BmcEndpoint]]:
    """A controller whose factory records every driver it builds."""
    built: list[BmcEndpoint] = []
    inner = default_driver_factory(timeouts)

    def factory(ep: BmcEndpoint):  # type: ignore[no-untyped-def]
        built.append(ep)
        return inner(ep)

    return BmcController(factory, policy), built


@pytest.fixture
def sushy(tmp_path: Path) -> Iterator[peers.Peer]:
    p = peers.start_sushy(tmp_path / "sushy")
    yield p
    p.stop()


@pytest.fixture
def sushy_tls(tmp_path: Path) -> Iterator[peers.Peer]:
    p = start_peer("sushy-tls", tmp_path / "sushy-tls")
    yield p
    p.stop()


def test_udp_black_hole_is_transient_then_unknown_in_bounded_time() -> None:
    ctl, built = counting_controller()
    with peers.udp_black_hole() as port:
        ep = BmcEndpoint(DriverKind.ipmi, "127.0.0.1", port, "admin", "x")
        start = time.monotonic()
        result = ctl.get_power_state_sync(ep)
        elapsed = time.monotonic() - start
        power = ctl.power_sync(ep, PowerAction.on)
    assert result.state == PowerState.unknown
    assert isinstance(result.error, BmcTransientError)
    assert result.attempts == FAST.max_attempts
    assert len(built) == 2 * FAST.max_attempts  # both operations: a fresh driver per try
    assert elapsed < FAST.max_attempts * (SHORT.connect + FAST.backoff_max) + 1
    assert power.state == PowerState.unknown and not power.ok


def test_tcp_that_never_answers_times_out() -> None:
    ctl, _ = counting_controller()
    with peers.tcp_silent() as port:
        ep = BmcEndpoint(DriverKind.redfish, "127.0.0.1", port, "admin", "x", scheme="http")
        start = time.monotonic()
        result = ctl.get_power_state_sync(ep)
        elapsed = time.monotonic() - start
    assert result.state == PowerState.unknown
    assert isinstance(result.error, BmcTimeoutError), result.error
    assert result.attempts == FAST.max_attempts
    assert elapsed < 6


def test_connection_refused_is_transient() -> None:
    ctl, _ = counting_controller()
    port = peers.free_port()
    result = ctl.get_power_state_sync(
        BmcEndpoint(DriverKind.redfish, "127.0.0.1", port, "a", "b", scheme="http")
    )
    assert isinstance(result.error, BmcConnectionError)
    assert result.state == PowerState.unknown


def test_http_500_twice_is_retried_then_succeeds(sushy: peers.Peer) -> None:
    ctl, built = counting_controller(timeouts=DriverTimeouts(connect=1, read=5))
    with peers.failing_proxy(f"http://127.0.0.1:{sushy.port}", failures=2) as (port, log):
        ep = BmcEndpoint(DriverKind.redfish, "127.0.0.1", port, scheme="http")
        result = ctl.get_power_state_sync(ep)
        power = ctl.power_sync(ep, PowerAction.on)
    assert result.ok, result.error
    assert result.state == PowerState.off
    assert result.attempts == 3 and len(built) >= 3
    assert [line.endswith(" 500") for line in log].count(True) == 2
    assert power.ok and power.state == PowerState.on
    assert peers.reference_power(sushy) == "on"


def test_http_500_on_the_command_is_retried(sushy: peers.Peer) -> None:
    """The failures land on the POST of the reset action, not on a read."""
    ctl, _ = counting_controller(timeouts=DriverTimeouts(connect=1, read=5))
    upstream = f"http://127.0.0.1:{sushy.port}"
    with peers.failing_proxy(upstream, failures=2, methods=("POST",), path_contains="Reset") as (
        port,
        log,
    ):
        ep = BmcEndpoint(DriverKind.redfish, "127.0.0.1", port, scheme="http")
        result = ctl.power_sync(ep, PowerAction.on)
    assert result.ok, result.error
    posts = [line for line in log if line.startswith("POST") and "Reset" in line]
    assert [line.rsplit(" ", 1)[1] for line in posts] == ["500", "500", "204"]
    assert result.attempts == 1 + 3  # one pre-read, three tries of the command
    assert peers.reference_power(sushy) == "on"


@pytest.mark.parametrize("name", ["sushy-tls", "ipmi_sim", "pyghmi"])
def test_wrong_credentials_are_fatal_and_not_retried(name: str, tmp_path: Path) -> None:
    peer = start_peer(name, tmp_path / name)
    try:
        ctl, built = counting_controller(timeouts=DriverTimeouts(connect=1, read=5))
        start = time.monotonic()
        wrong = "wrong-password"  # noqa: S105
        result = ctl.power_sync(endpoint_for(peer, password=wrong), PowerAction.on)
        elapsed = time.monotonic() - start
        assert isinstance(result.error, BmcAuthError), result.error
        assert result.attempts == 1 and len(built) == 1
        assert result.state == PowerState.unknown
        assert elapsed < 3
        assert peers.reference_power(peer) == "off"  # nothing happened
    finally:
        peer.stop()


def test_redirect_to_another_origin_is_refused_without_leaking_credentials() -> None:
    ctl, built = counting_controller()
    with peers.redirect_pair() as (src, _dst, seen):
        ep = BmcEndpoint(
            DriverKind.redfish, "127.0.0.1", src, "admin", "s3cret-redirect", scheme="http"
        )
        result = ctl.get_power_state_sync(ep)
    assert isinstance(result.error, BmcRedirectRefused), result.error
    assert result.attempts == 1 and len(built) == 1
    assert seen == []  # the other origin received nothing at all
    assert "s3cret-redirect" not in str(result.error)


def test_guarded_session_refuses_cross_origin_but_follows_same_origin() -> None:
    """The HTTP session itself, below sushy: Authorization never reaches the other port."""
    import requests

    from bmc.redfish import GuardedSession, _RedirectRefused

    with peers.redirect_pair() as (src, dst, seen):
        s = GuardedSession()
        s.auth = ("admin", "pw")
        with pytest.raises(_RedirectRefused):
            s.get(f"http://127.0.0.1:{src}/redfish/v1/", timeout=2)
        assert seen == []
        # a plain requests session (what sushy uses) does follow it
        plain = requests.Session()
        plain.trust_env = False
        assert plain.get(f"http://127.0.0.1:{src}/redfish/v1/", timeout=2).ok
        assert len(seen) == 1 and f"127.0.0.1:{dst}" in seen[0]["Host"]


def test_tls_verifies_against_the_endpoint_ca(
    sushy_tls: peers.Peer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ctl, _ = counting_controller(timeouts=DriverTimeouts(connect=1, read=5))
    good = endpoint_for(sushy_tls)
    assert ctl.get_power_state_sync(good).ok
    # No CA for this endpoint: the default trust store does not know the test CA.
    no_ca = endpoint_for(sushy_tls, ca_bundle=None)
    result = ctl.get_power_state_sync(no_ca)
    assert isinstance(result.error, BmcTlsError), result.error
    assert result.attempts == 1
    # REQUESTS_CA_BUNDLE pointing at the right CA must NOT silently change that.
    bundle = tmp_path / "env-ca.pem"
    bundle.write_text(sushy_tls.ca_pem or "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bundle))
    assert isinstance(ctl.get_power_state_sync(no_ca).error, BmcTlsError)
    # An explicit opt-out works.
    insecure = endpoint_for(sushy_tls, ca_bundle=None, verify_tls=False)
    assert ctl.get_power_state_sync(insecure).ok
    # A CA bundle of another CA fails.
    _, _, other_ca = peers.make_tls(tmp_path)
    assert isinstance(
        ctl.get_power_state_sync(endpoint_for(sushy_tls, ca_bundle=other_ca)).error, BmcTlsError
    )


def test_ca_bundle_temp_file_is_removed(sushy_tls: peers.Peer) -> None:
    from bmc.redfish import RedfishDriver

    drv = RedfishDriver(endpoint_for(sushy_tls), DriverTimeouts(connect=1, read=5))
    assert drv.get_power_state() == PowerState.off
    path = drv._ca_path
    assert path is not None and Path(path).exists()
    drv.close()
    assert not Path(path).exists()


def test_probe_identifies_each_peer(tmp_path: Path) -> None:
    for name, kind in (
        ("sushy", DriverKind.redfish),
        ("sushy-tls", DriverKind.redfish),
        ("ipmi_sim", DriverKind.ipmi),
        ("pyghmi", DriverKind.ipmi),
    ):
        peer = start_peer(name, tmp_path / name)
        try:
            assert probe(peer.address, peer.port, timeout=1.0) == kind, name
            ctl, _ = counting_controller(timeouts=DriverTimeouts(connect=1, read=5))
            auto = endpoint_for(
                peer, driver=DriverKind.auto, scheme="https"
            )  # probing finds http where it is
            result = ctl.get_power_state_sync(auto)
            assert result.ok and result.state == PowerState.off, (name, result.error)
        finally:
            peer.stop()


def test_probe_of_nothing_fails_fast() -> None:
    with peers.udp_black_hole() as port:
        start = time.monotonic()
        with pytest.raises(BmcConnectionError):
            probe("127.0.0.1", port, timeout=0.3)
        assert time.monotonic() - start < 3


def test_stock_emulator_delay_is_waited_out(tmp_path: Path) -> None:
    """sushy-emulator as shipped applies power changes 1-11 s late."""
    peer = peers.start_sushy(tmp_path / "stock", delay=None)
    try:
        ctl, _ = counting_controller(timeouts=DriverTimeouts(connect=1, read=5))
        result = ctl.power_sync(endpoint_for(peer), PowerAction.on, settle_timeout=15)
        assert result.ok, result.error
        assert result.state == PowerState.on == peers.reference_power(peer)
        assert result.polls >= 1
    finally:
        peer.stop()


def test_ipmi_15_only_bmc_is_refused() -> None:
    ctl, built = counting_controller()
    with peers.fake_ipmi_bmc(ipmi20=False) as (port, proposals):
        result = ctl.get_power_state_sync(
            BmcEndpoint(DriverKind.ipmi, "127.0.0.1", port, "admin", "x")
        )
    assert isinstance(result.error, BmcUnsupportedError), result.error
    assert "IPMI v2.0" in str(result.error)
    assert result.attempts == 1 and proposals == []  # no session was even proposed


def test_only_cipher_suites_17_and_3_are_ever_proposed() -> None:
    ctl, _ = counting_controller()
    with peers.fake_ipmi_bmc(ipmi20=True) as (port, proposals):
        result = ctl.get_power_state_sync(
            BmcEndpoint(DriverKind.ipmi, "127.0.0.1", port, "admin", "x")
        )
    assert isinstance(result.error, BmcUnsupportedError), result.error
    assert result.attempts == 1
    # suite 17: RAKP-HMAC-SHA256 (3), HMAC-SHA256-128 (4), AES-CBC-128 (1)
    # suite 3:  RAKP-HMAC-SHA1 (1),   HMAC-SHA1-96 (1),    AES-CBC-128 (1)
    assert proposals == [(3, 4, 1), (1, 1, 1)]


def test_ipmi_over_ipv6_is_unsupported_not_retried() -> None:
    ctl, built = counting_controller()
    result = ctl.get_power_state_sync(BmcEndpoint(DriverKind.ipmi, "::1", 623, "a", "b"))
    assert isinstance(result.error, BmcUnsupportedError)
    assert result.attempts == 1
