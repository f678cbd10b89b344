# ruff: noqa: S311, S104
"""The DHCP servers on real UDP sockets (127.0.0.1, high ports): robustness and both modes.

The test client plays a relay agent (giaddr = 127.0.0.1), so replies come back to its port
over loopback exactly as they would to a real relay.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from pxe.backend import BootDecision, ListSink, StaticBackend, TimelineKind
from pxe.dhcp.decide import BootConfig, Mode
from pxe.dhcp.leases import LeaseStore
from pxe.dhcp.packet import HEADER, MessageType, Opt, parse
from pxe.dhcp.server import DhcpServer, FullModeConfig
from tests.peers.netlab import LoopThread
from tests.support.ports import free_udp_port as free_port
from tests.support.pxe import Client, pxe_request
from tests.support.wait import eventually

MAC = "52:54:00:aa:bb:01"
BOOT = BootConfig(server_ip="127.0.0.1", http_base_url="http://127.0.0.1:8080")


def start(
    loop: LoopThread,
    client: Client,
    mode: Mode,
    backend: StaticBackend,
    sink: ListSink,
    leases: LeaseStore | None = None,
) -> DhcpServer:
    srv = DhcpServer(
        mode=mode,
        boot=BOOT,
        backend=backend,
        sink=sink,
        address="127.0.0.1",
        server_port=free_port(),
        client_port=client.port,
        relay_port=client.port,
        pxe_port=free_port(),
        leases=leases,
        network=FullModeConfig(subnet_mask="255.0.0.0", router="127.0.0.1", lease_seconds=600),
        flush_delay=0.05,
    )
    loop.run(srv.start())
    return srv


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def allow_all() -> StaticBackend:
    return StaticBackend(default=BootDecision(known=False, allow_boot=True))


def test_proxy_offer_and_4011_ack(loop, client, sink, allow_all) -> None:  # noqa: ANN001
    srv = start(loop, client, Mode.PROXY, allow_all, sink)
    try:
        client.send(
            pxe_request(MAC, arch=0, uuid="8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d"), srv.server_port
        )
        offer = client.recv()
        assert offer is not None and offer.message_type is MessageType.OFFER
        assert offer.yiaddr == "0.0.0.0"  # proxy: never an address
        assert offer.file == b"undionly.kpxe" and offer.siaddr == "127.0.0.1"
        assert offer.vendor_class == "PXEClient"
        assert offer.options[Opt.CLIENT_UUID] == pxe_request_uuid()
        assert offer.pxe_options == {6: b"\x08"}
        assert offer.server_id == "127.0.0.1"
        # the ProxyDHCP REQUEST to 4011 is answered to its source
        client.send(pxe_request(MAC, mtype=3, arch=7, giaddr="0.0.0.0"), srv.pxe_port or 0)
        ack = client.recv()
        assert ack is not None and ack.message_type is MessageType.ACK
        assert ack.file == b"snponly.efi"
        # iPXE gets the script URL and no-pxedhcp
        client.send(pxe_request(MAC, arch=0, ipxe=True), srv.server_port)
        offer = client.recv()
        assert offer is not None
        assert offer.file.startswith(b"http://127.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3Aaa")
        assert offer.ipxe_options == {176: b"\x01"}
        eventually(
            lambda: (
                sink.kinds(MAC)
                == [
                    TimelineKind.DISCOVER,
                    TimelineKind.OFFER,
                    TimelineKind.REQUEST,
                    TimelineKind.ACK,
                    TimelineKind.DISCOVER,
                    TimelineKind.OFFER,
                ]
            )
        )
        eventually(lambda: srv.stats.answered == 3)
    finally:
        loop.run(srv.stop())


def pxe_request_uuid() -> bytes:
    return parse(pxe_request(uuid="8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d")).options[Opt.CLIENT_UUID]


def test_proxy_not_allowed_is_not_answered(loop, client, sink) -> None:  # noqa: ANN001
    srv = start(loop, client, Mode.PROXY, StaticBackend(), sink)
    try:
        client.send(pxe_request(MAC), srv.server_port)
        assert client.recv(0.3) is None
        assert srv.stats.dropped["not_allowed"] == 1
        assert sink.kinds(MAC) == [TimelineKind.DISCOVER, TimelineKind.IGNORED]
    finally:
        loop.run(srv.stop())


def _bad_packets() -> dict[str, bytes]:
    good = pxe_request(MAC)
    b = bytearray(good)
    hlen = bytearray(good)
    hlen[2] = 255
    reply = bytearray(good)
    reply[0] = 2
    unknown = bytearray(good)
    unknown[0] = 9
    opts = HEADER.size + 4
    return {
        "truncated": good[:120],
        "no_magic_cookie": bytes(b[: HEADER.size]) + b"\0\0\0\0" + bytes(b[opts:]),
        "option_length_past_end": bytes(b[:opts]) + bytes((53, 1, 1, 60, 250)) + b"PXEClient",
        "hlen_255": bytes(hlen),
        "bootreply": bytes(reply),
        "unknown_op": bytes(unknown),
        "non_pxe_discover": pxe_request(MAC, vendor=b"MSFT 5.0"),
    }


REASONS = {
    "truncated": "malformed",
    "no_magic_cookie": "malformed",
    "option_length_past_end": "malformed",
    "hlen_255": "malformed",
    "bootreply": "not_request",
    "unknown_op": "not_request",
    "non_pxe_discover": "not_pxe",
}


@pytest.mark.parametrize("name", list(REASONS), ids=list(REASONS))
def test_bad_input_dropped_counted_then_served(loop, client, sink, allow_all, name) -> None:  # noqa: ANN001
    srv = start(loop, client, Mode.PROXY, allow_all, sink)
    try:
        client.send(_bad_packets()[name], srv.server_port)
        eventually(lambda: srv.stats.dropped[REASONS[name]] == 1)
        client.send(pxe_request(MAC), srv.server_port)
        offer = client.recv()
        assert offer is not None and offer.message_type is MessageType.OFFER
        eventually(lambda: srv.stats.received == 2 and srv.stats.answered == 1)
    finally:
        loop.run(srv.stop())


def test_flood_of_random_macs_then_served(loop, client, sink, allow_all) -> None:  # noqa: ANN001
    srv = start(loop, client, Mode.PROXY, allow_all, sink)
    rng = random.Random(1)
    try:
        for i in range(2000):
            mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
            client.send(pxe_request(mac, vendor=b"udhcp 1.36.1", xid=i), srv.server_port)
            if i % 250 == 249:  # bursts of 250, so the kernel's socket buffer never overflows
                eventually(lambda n=i: srv.stats.received == n + 1, timeout=5)
        assert srv.stats.dropped["not_pxe"] == 2000
        client.send(pxe_request(MAC, xid=99999), srv.server_port)
        offer = client.recv()
        while offer is not None and offer.xid != 99999:
            offer = client.recv()
        assert offer is not None and offer.message_type is MessageType.OFFER
        eventually(lambda: srv.stats.answered == 1)
        assert srv.stats.dropped["not_pxe"] == srv.stats.received - 1
    finally:
        loop.run(srv.stop())


def _dora(client: Client, srv: DhcpServer, mac: str, xid: int) -> tuple[str, object]:
    client.send(pxe_request(mac, xid=xid, ipxe=True), srv.server_port)
    offer = client.recv()
    assert offer is not None and offer.message_type is MessageType.OFFER, srv.stats
    extra = {
        Opt.REQUESTED_IP: bytes(map(int, offer.yiaddr.split("."))),
        Opt.SERVER_ID: bytes((127, 0, 0, 1)),
    }
    client.send(pxe_request(mac, mtype=3, xid=xid, ipxe=True, extra=extra), srv.server_port)
    ack = client.recv()
    assert ack is not None
    return offer.yiaddr, ack


def test_full_mode_static_and_pool_leases_survive_restart(
    loop, client, sink, tmp_path: Path
) -> None:  # noqa: ANN001
    backend = StaticBackend(
        {MAC: BootDecision(known=True, allow_boot=True, static_ip="127.0.5.5")},
        default=BootDecision(known=False, allow_boot=True),
    )
    path = tmp_path / "state" / "leases.json"
    srv = start(
        loop, client, Mode.FULL, backend, sink, LeaseStore(path, ("127.0.9.10", "127.0.9.11"))
    )
    try:
        ip, ack = _dora(client, srv, MAC, 1)
        assert ip == "127.0.5.5" and ack.message_type is MessageType.ACK  # type: ignore[attr-defined]
        assert ack.file.startswith(b"http://127.0.0.1:8080/boot.ipxe")  # type: ignore[attr-defined]
        assert ack.options[Opt.LEASE_TIME] == (600).to_bytes(4, "big")  # type: ignore[attr-defined]
        assert ack.ipxe_options == {176: b"\x01"}  # type: ignore[attr-defined]
        ip2, ack2 = _dora(client, srv, "52:54:00:aa:bb:02", 2)
        assert ip2 == "127.0.9.10" and ack2.message_type is MessageType.ACK  # type: ignore[attr-defined]
        ip3, _ = _dora(client, srv, "52:54:00:aa:bb:03", 3)
        assert ip3 == "127.0.9.11"
        # pool exhausted
        client.send(pxe_request("52:54:00:aa:bb:04", xid=4), srv.server_port)
        assert client.recv(0.3) is None
        assert srv.stats.dropped["no_address"] == 1
        # a REQUEST for an address that is someone else's gets a NAK
        extra = {Opt.REQUESTED_IP: bytes((127, 0, 9, 10)), Opt.SERVER_ID: bytes((127, 0, 0, 1))}
        client.send(pxe_request("52:54:00:aa:bb:05", mtype=3, xid=5, extra=extra), srv.server_port)
        nak = client.recv()
        assert nak is not None and nak.message_type is MessageType.NAK
        # a REQUEST naming another server: not ours, offer forgotten, silent
        extra = {Opt.REQUESTED_IP: bytes((127, 0, 9, 10)), Opt.SERVER_ID: bytes((10, 9, 9, 9))}
        client.send(pxe_request("52:54:00:aa:bb:06", mtype=3, xid=6, extra=extra), srv.server_port)
        assert client.recv(0.3) is None
        # RELEASE frees 127.0.9.11
        client.send(pxe_request("52:54:00:aa:bb:03", mtype=7, xid=7), srv.server_port)
        eventually(lambda: "52:54:00:aa:bb:03" not in srv.leases.by_mac)
        eventually(lambda: path.exists() and len(json.loads(path.read_text())["leases"]) == 2)
    finally:
        loop.run(srv.stop())
    # restart: the bound leases are kept
    srv = start(
        loop, client, Mode.FULL, backend, sink, LeaseStore(path, ("127.0.9.10", "127.0.9.11"))
    )
    try:
        assert srv.leases.by_mac["52:54:00:aa:bb:02"].ip == "127.0.9.10"
        ip2, ack2 = _dora(client, srv, "52:54:00:aa:bb:02", 8)
        assert ip2 == "127.0.9.10" and ack2.message_type is MessageType.ACK  # type: ignore[attr-defined]
        ip4, _ = _dora(client, srv, "52:54:00:aa:bb:04", 9)
        assert ip4 == "127.0.9.11"
        # DECLINE quarantines the address
        extra = {Opt.REQUESTED_IP: bytes((127, 0, 9, 11))}
        client.send(pxe_request("52:54:00:aa:bb:04", mtype=4, xid=10, extra=extra), srv.server_port)
        eventually(lambda: "127.0.9.11" in srv.leases.declined)
        eventually(
            lambda: {TimelineKind.DECLINE, TimelineKind.ACK} <= set(sink.kinds("52:54:00:aa:bb:04"))
        )
    finally:
        loop.run(srv.stop())


def test_corrupt_lease_file_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    path.write_text("{not json")
    assert LeaseStore(path, ("10.0.0.1", "10.0.0.2")).by_mac == {}


def test_refuses_wildcard() -> None:
    from pxe.errors import PxeError

    srv = DhcpServer(
        mode=Mode.PROXY,
        boot=BOOT,
        backend=StaticBackend(),
        sink=ListSink(),
        address="0.0.0.0",
        server_port=free_port(),
    )  # noqa: S104
    lt = LoopThread()
    try:
        with pytest.raises(PxeError):
            lt.run(srv.start())
    finally:
        lt.close()


def test_random_garbage_never_stops_server(loop, client, sink, allow_all) -> None:  # noqa: ANN001
    srv = start(
        loop, client, Mode.FULL, allow_all, sink, LeaseStore(None, ("127.0.8.1", "127.0.8.250"))
    )
    try:
        rng = random.Random(3)
        for _ in range(500):
            client.send(os.urandom(rng.randrange(0, 600)), srv.server_port)
        eventually(lambda: srv.stats.received >= 450)
        client.send(pxe_request(MAC, xid=77), srv.server_port)
        offer = client.recv()
        while offer is not None and offer.xid != 77:
            offer = client.recv()
        assert offer is not None and offer.yiaddr.startswith("127.0.8.")
    finally:
        loop.run(srv.stop())


class SlowBackend:
    """Suspends like a network backend would; fails for one MAC after suspending."""

    async def decide(self, query):  # noqa: ANN001, ANN201
        import asyncio

        await asyncio.sleep(10 if query.mac.endswith(":dd") else 0.01)
        await asyncio.sleep(0)
        if query.mac.endswith(":ee"):
            from pxe.errors import BackendError

            raise BackendError("down")
        return BootDecision(allow_boot=True)


class TaskBoundBackend:
    """Uses what needs a current asyncio Task (asyncio.timeout, like httpx/anyio inside)."""

    async def decide(self, query):  # noqa: ANN001, ANN201
        import asyncio

        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        return BootDecision(allow_boot=True)


def test_backend_that_needs_a_current_task(loop, client, sink) -> None:  # noqa: ANN001
    srv = start(loop, client, Mode.PROXY, TaskBoundBackend(), sink)  # type: ignore[arg-type]
    try:
        client.send(pxe_request(MAC, xid=3), srv.server_port)
        offer = client.recv()
        assert offer is not None and offer.xid == 3
        assert srv.stats.dropped["backend_error"] == 0
    finally:
        loop.run(srv.stop())


def test_backend_that_suspends(loop, client, sink) -> None:  # noqa: ANN001
    srv = start(loop, client, Mode.PROXY, SlowBackend(), sink)  # type: ignore[arg-type]
    try:
        client.send(pxe_request("52:54:00:00:00:ee", xid=1), srv.server_port)
        client.send(pxe_request(MAC, xid=2), srv.server_port)
        offer = client.recv()
        assert offer is not None and offer.xid == 2
        assert client.recv(0.2) is None
        eventually(lambda: srv.stats.dropped["backend_error"] == 1 and not srv._tasks)
        # a stop while requests wait on the backend cancels them cleanly
        for i in range(20):
            client.send(pxe_request(f"52:54:00:00:{i:02x}:dd", xid=100 + i), srv.server_port)
        eventually(lambda: len(srv._tasks) == 20)
    finally:
        loop.run(srv.stop())
    eventually(lambda: not srv._tasks)
    assert srv.stats.answered == 1


class BrokenPeekBackend:
    """``decide_now`` fails; ``decide`` works: the request must still be answered."""

    def __init__(self) -> None:
        self.asked = 0

    def decide_now(self, query):  # noqa: ANN001, ANN201
        raise RuntimeError("peek failed")

    async def decide(self, query):  # noqa: ANN001, ANN201
        self.asked += 1
        return BootDecision(allow_boot=True)


def test_backend_whose_answer_at_hand_fails_is_awaited(loop, client, sink) -> None:  # noqa: ANN001
    backend = BrokenPeekBackend()
    srv = start(loop, client, Mode.PROXY, backend, sink)  # type: ignore[arg-type]
    try:
        client.send(pxe_request(MAC, xid=9), srv.server_port)
        offer = client.recv()
        assert offer is not None and offer.xid == 9
        assert backend.asked == 1 and srv.stats.dropped["backend_error"] == 0
    finally:
        loop.run(srv.stop())
