# ruff: noqa: S311
"""Issue 10.12 end to end: ``bronze serve``'s app with the in-process boot plane (full-mode DHCP
on 127.0.0.1 high ports, SQLite, discovery on) under a flood of DISCOVERs from random MACs: the
known machine is answered, unknown MACs do not hold the pool, and the REST API (and
``/boot.ipxe``) keeps answering, never with a 500. Behaviour only, no figures.

DHCP replies go to the relay address (giaddr 127.0.0.1) at the server's own port, where they are
dropped as replies: nothing leaves loopback."""

from __future__ import annotations

import random
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxe import PxeSettings
from tests.peers.apiserver import RunningServer, run_server
from tests.support.boot import machine, profile, seed, timeline
from tests.support.ports import free_udp_port as free_port
from tests.support.pxe import pxe_request
from tests.support.wait import eventually

KNOWN = "52:54:00:dd:00:01"


@pytest.fixture
def served(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    pxe = PxeSettings(
        enabled=True,
        mode="full",
        address="127.0.0.1",
        dhcp_port=free_port(),
        dhcp_client_port=free_port(),
        proxy_port=free_port(),
        tftp_enabled=False,
        pool_start="127.0.0.100",
        pool_end="127.0.0.140",
        dhcp_known_refresh=0.2,
        dhcp_unknown_offers=8,
    )
    with run_server(tmp_path / "data", sqlite_url, pxe_settings=pxe) as srv:
        yield srv


def test_flood_of_random_macs(served: RunningServer) -> None:
    c = served.client()
    seed(c)
    profile(c, "discovery", agent=True)
    profile(c, "generic")
    machine(c, "k1", KNOWN)
    dhcp = served.app.state.pxe.dhcp
    eventually(lambda: KNOWN in dhcp.admission.known)
    port = dhcp.server_port
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        rng = random.Random(3)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        try:
            while not stop.is_set():
                for _ in range(200):
                    mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
                    s.sendto(pxe_request(mac, xid=rng.randrange(1 << 32)), ("127.0.0.1", port))
                    sent[0] += 1
                # paced by the server's receive count, so the socket buffer never overflows
                eventually(lambda: dhcp.stats.received >= sent[0] or stop.is_set(), timeout=30)
        finally:
            s.close()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    known = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    known.bind(("127.0.0.1", 0))
    try:
        eventually(lambda: sent[0] >= 2000, timeout=60)

        def known_offered() -> bool:
            known.sendto(pxe_request(KNOWN, xid=77, ipxe=True), ("127.0.0.1", port))
            return "OFFER" in [e["kind"] for e in timeline(c, KNOWN)]

        eventually(known_offered, timeout=30)
        anon = served.client("")
        for i in range(20):  # REST and the script endpoint answer during the flood
            assert c.get("/api/v1/machines", params={"limit": 5}).status_code == 200
            r = anon.get("/boot.ipxe", params={"mac": f"02:00:00:00:10:{i:02x}"})
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert r.headers["Retry-After"] and r.json()["error"]["code"] == "unavailable"
        assert c.get("/healthz").status_code == 200
        # The flood was mostly dropped before the database, and never held the pool.
        dropped = dhcp.stats.dropped
        assert dropped["unknown_rate"] + dropped["unknown_busy"] > 0
        held = [x for x in dhcp.leases.by_mac.values() if not x.bound and x.mac.startswith("02:")]
        assert len(held) <= 8
        assert dropped["no_address"] == 0
    finally:
        stop.set()
        flooder.join(timeout=60)
        known.close()


def test_database_error_is_503_with_retry_after(api_sqlite: RunningServer, sqlite_url: str) -> None:
    """A database error on a request path (here: a table gone from under the server, the same
    ``OperationalError`` SQLite raises when busy) is a 503 with ``Retry-After``, never a 500,
    and the server stays up."""
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE boot_profiles")
    r = api_sqlite.client("").get("/boot.ipxe", params={"mac": "02:00:00:00:20:01"})
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"] == {
        "code": "unavailable",
        "message": "database busy, retry shortly",
        "details": None,
    }
    assert api_sqlite.client().get("/healthz").status_code == 200
