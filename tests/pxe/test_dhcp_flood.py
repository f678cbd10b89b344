# ruff: noqa: S311
"""Issue 10.12 on real UDP (127.0.0.1, high ports): a flood of DISCOVERs from random MACs must
not starve known machines nor exhaust the pool. Behaviour only, no figures."""

from __future__ import annotations

import random

import pytest

from pxe.backend import BootDecision, ListSink, StaticBackend
from pxe.dhcp.admission import Admission, UnknownOffers
from pxe.dhcp.decide import BootConfig, Mode
from pxe.dhcp.leases import LeaseStore
from pxe.dhcp.packet import MessageType, Opt, Packet
from pxe.dhcp.server import DhcpServer, FullModeConfig
from tests.peers.netlab import LoopThread
from tests.support.ports import free_udp_port as free_port
from tests.support.pxe import Client, pxe_request
from tests.support.wait import eventually

KNOWN = "52:54:00:cc:00:01"
POOL_CLIENT = "52:54:00:cc:00:02"  # not in the backend: a pool machine with a bound lease
BOOT = BootConfig(server_ip="127.0.0.1", http_base_url="http://127.0.0.1:8080")


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


def server(loop: LoopThread, client: Client, sink: ListSink, leases: LeaseStore) -> DhcpServer:
    backend = StaticBackend(
        {KNOWN: BootDecision(known=True, allow_boot=True, static_ip="127.0.5.5")},
        default=BootDecision(known=False, allow_boot=False),  # discovery off
    )
    srv = DhcpServer(
        mode=Mode.FULL,
        boot=BOOT,
        backend=backend,
        sink=sink,
        address="127.0.0.1",
        server_port=free_port(),
        client_port=client.port,
        relay_port=client.port,
        leases=leases,
        network=FullModeConfig(subnet_mask="255.0.0.0", lease_seconds=600),
        admission=Admission(unknown_rate=20.0, unknown_burst=20, unknown_inflight=8),
        unknown_offers=UnknownOffers(limit=4, seconds=2.0),
    )
    loop.run(srv.start())
    return srv


def reply_to(client: Client, xid: int) -> Packet | None:
    """The reply with this xid among the flood's replies (None after 2 s of silence)."""
    while True:
        got = client.recv()
        if got is None or got.xid == xid:
            return got


def flood(client: Client, srv: DhcpServer, rng: random.Random, n: int, first_xid: int) -> None:
    base = srv.stats.received
    for i in range(n):
        mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
        client.send(pxe_request(mac, xid=first_xid + i), srv.server_port)
        if i % 200 == 199:  # bursts, so the kernel's socket buffer never overflows
            eventually(lambda w=base + i + 1: srv.stats.received >= w, timeout=5)


def test_known_machine_and_pool_served_during_a_flood(
    loop: LoopThread, client: Client, sink: ListSink
) -> None:
    leases = LeaseStore(None, ("127.0.9.1", "127.0.9.16"))
    leases.bind(POOL_CLIENT, "127.0.9.16", 600)
    srv = server(loop, client, sink, leases)
    rng = random.Random(7)
    try:
        for round_ in range(5):
            flood(client, srv, rng, 400, 10_000 + round_ * 1000)
            xid = 100 + round_
            client.send(pxe_request(KNOWN, xid=xid, ipxe=True), srv.server_port)
            offer = reply_to(client, xid)
            assert offer is not None and offer.message_type is MessageType.OFFER, srv.stats
            assert offer.yiaddr == "127.0.5.5"
            # the pool machine renews its bound lease during the flood
            extra = {Opt.REQUESTED_IP: bytes((127, 0, 9, 16))}
            client.send(
                pxe_request(POOL_CLIENT, mtype=3, xid=xid + 50, extra=extra), srv.server_port
            )
            ack = reply_to(client, xid + 50)
            assert ack is not None and ack.message_type is MessageType.ACK, srv.stats
        eventually(lambda: srv.stats.received >= 2000 + 10)
        # Most of the flood was dropped before the backend, and it never held the pool.
        assert srv.stats.dropped["unknown_rate"] + srv.stats.dropped["unknown_busy"] > 0
        held = [x for x in leases.by_mac.values() if not x.bound and x.mac.startswith("02:")]
        assert len(held) <= 4 < 15
        assert srv.stats.dropped["no_address"] == 0

        # A new pool client (unknown to the backend) still gets an address once it retries.
        def new_client_offered() -> bool:
            client.send(pxe_request("52:54:00:cc:00:03", xid=999), srv.server_port)
            got = reply_to(client, 999)
            return got is not None and got.message_type is MessageType.OFFER

        eventually(new_client_offered, timeout=20)
    finally:
        loop.run(srv.stop())


def test_known_macs_listed_before_any_decision(
    loop: LoopThread, client: Client, sink: ListSink
) -> None:
    """The backend's list is loaded at start: a known MAC's first DISCOVER is admitted even
    when the unknown share is used up."""
    srv = server(loop, client, sink, LeaseStore(None, ("127.0.9.1", "127.0.9.16")))
    try:
        assert KNOWN in srv.admission.known
        srv.admission.unknown_rate, srv.admission._tokens = 1e-9, 0.0  # share used up
        client.send(pxe_request("52:54:00:cc:00:09", xid=5), srv.server_port)
        eventually(lambda: srv.stats.dropped["unknown_rate"] == 1)
        client.send(pxe_request(KNOWN, xid=6, ipxe=True), srv.server_port)
        offer = reply_to(client, 6)
        assert offer is not None and offer.message_type is MessageType.OFFER
    finally:
        loop.run(srv.stop())


def test_events_carry_the_whole_script_url(
    loop: LoopThread, client: Client, sink: ListSink
) -> None:
    """The boot plane binds tokens to the ``boot=`` of the URL it reads from ACK events; a URL
    longer than the 128-byte file field (long host, uuid) must still reach it whole."""
    srv = server(loop, client, sink, LeaseStore(None, ("127.0.9.1", "127.0.9.16")))
    uuid = "8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d"
    srv.boot = BootConfig(server_ip="127.0.0.1", http_base_url="http://boot.example.invalid:8080")
    try:
        client.send(pxe_request(KNOWN, xid=0xABCD, ipxe=True, uuid=uuid), srv.server_port)
        offer = reply_to(client, 0xABCD)
        assert offer is not None and offer.file == b""  # too long for the field
        files = eventually(lambda: [e.detail["file"] for e in sink.events if "file" in e.detail])
        assert files[0].endswith(f"&uuid={uuid}&boot=0000abcd"), files
    finally:
        loop.run(srv.stop())
