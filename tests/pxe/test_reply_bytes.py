"""The DHCP receive path answers fixture requests with exactly the bytes it answered before the
per-packet fast path (``docs/performance.md``, "DHCP: DISCOVER -> OFFER latency"): a change to
parsing, the MAC string, admission or encoding that alters a single reply byte fails here. Both
paths are pinned: the answer at hand (``decide_now``, no task) and the awaited backend (a task
per request), with the same timeline events in the same order.

The digests were taken from the code before the change (commit ea3cac1) with the same fixtures;
the server runs on a fake transport, so the test needs no socket and no root.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from pxe.backend import BootDecision, BootQuery, ListSink, StaticBackend
from pxe.dhcp.decide import BootConfig, Mode
from pxe.dhcp.leases import LeaseStore
from pxe.dhcp.packet import Opt
from pxe.dhcp.server import DhcpServer, FullModeConfig
from tests.support.pxe import pxe_request

UUID = "8a5e1c2d-3b4f-4a6e-9c7d-0e1f2a3b4c5d"
REQUESTS = {
    "bios-discover": pxe_request("52:54:00:00:00:01"),
    "uefi-discover": pxe_request(
        "52:54:00:00:00:02", arch=7, vendor=b"PXEClient:Arch:00007:UNDI:003000", uuid=UUID
    ),
    "ipxe-discover": pxe_request("52:54:00:00:00:03", ipxe=True, xid=0xABCDEF01),
    "bios-request": pxe_request(
        "52:54:00:00:00:01",
        mtype=3,
        extra={Opt.REQUESTED_IP: bytes((10, 0, 0, 10)), Opt.SERVER_ID: bytes((10, 0, 0, 1))},
    ),
    "request-not-ours": pxe_request(
        "52:54:00:00:00:04", mtype=3, extra={Opt.REQUESTED_IP: bytes((10, 0, 0, 99))}
    ),
    "inform": pxe_request("52:54:00:00:00:05", mtype=8, ipxe=True),
}

# sha256 of each reply (None: no reply), per mode, from the code before the fast path.
EXPECTED = {
    Mode.FULL: {
        "bios-discover": "af9bd8fc8ce24dd195cc317bfcd696414b2239e0ea9081da4ab7a29d0c3f0841",
        "uefi-discover": "70d2f6c12404eeec24d73a0de275637b0ceb66df7e38922afb97f96ebdceab1f",
        "ipxe-discover": "96f483c462e5c1b8faafb4c65890660d35a1fb4f7ce82d82ec59458201e3b508",
        "bios-request": "12a7d47244b7a5fad009a19cec014de47b931b132bcad9f7afeb6dc9cab2f4fd",
        "request-not-ours": "f9b5fa770fbfe5a3756433c3d4bd641180c67f51582e1531b5224a050f3e5d2a",
        "inform": "cde34975d9bb8fa3da6f0bb355a4b3e7eae82e4db7f81c3283ab0f7247edb676",
    },
    Mode.PROXY: {
        "bios-discover": "64ff2168b3e73da137ef8c35515e1c75b7eda2006e9bcaeb2e78aab7a5808fb4",
        "uefi-discover": "ceb933d9a5e6a6f2b24bfe1869c4eebf8b1d9c58411c0213f72c221aee79dd0d",
        "ipxe-discover": "a0fe1f4bf064cdd44218183c813ff413e19bea57df5de1066ca0a9930462181e",
        "bios-request": None,
        "request-not-ours": None,
        "inform": "bbf018a694ce4c65a3ed5d33510bbdcd6eba1e8d957bcdbfb4c7d8fdeb6bfc43",
    },
}

# The timeline events of the same requests, from the code before ``decide_now`` (main at 996f419).
EVENTS: dict[Mode, list[tuple[str, str | None, dict[str, object]]]] = {
    Mode.FULL: [
        ("DISCOVER", "52:54:00:00:00:01", {"arch": "bios", "port4011": False}),
        (
            "OFFER",
            "52:54:00:00:00:01",
            {"yiaddr": "10.0.0.10", "file": "undionly.kpxe", "to": "127.0.0.1:67"},
        ),
        ("DISCOVER", "52:54:00:00:00:02", {"arch": "uefi-x64", "port4011": False}),
        (
            "OFFER",
            "52:54:00:00:00:02",
            {"yiaddr": "10.0.0.11", "file": "snponly.efi", "to": "127.0.0.1:67"},
        ),
        ("DISCOVER", "52:54:00:00:00:03", {"arch": "bios", "port4011": False}),
        (
            "OFFER",
            "52:54:00:00:00:03",
            {
                "yiaddr": "10.0.0.12",
                "file": "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A03&arch=bios&boot=abcdef01",
                "to": "127.0.0.1:67",
            },
        ),
        ("REQUEST", "52:54:00:00:00:01", {"arch": "bios", "port4011": False}),
        (
            "ACK",
            "52:54:00:00:00:01",
            {"yiaddr": "10.0.0.10", "file": "undionly.kpxe", "to": "127.0.0.1:67"},
        ),
        ("REQUEST", "52:54:00:00:00:04", {"arch": "bios", "port4011": False}),
        ("NAK", "52:54:00:00:00:04", {"yiaddr": "0.0.0.0", "file": "", "to": "127.0.0.1:67"}),
        ("INFORM", "52:54:00:00:00:05", {"arch": "bios", "port4011": False}),
        (
            "ACK",
            "52:54:00:00:00:05",
            {
                "yiaddr": "0.0.0.0",
                "file": "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A05&arch=bios&boot=00001234",
                "to": "127.0.0.1:67",
            },
        ),
    ],
    Mode.PROXY: [
        ("DISCOVER", "52:54:00:00:00:01", {"arch": "bios", "port4011": False}),
        (
            "OFFER",
            "52:54:00:00:00:01",
            {"yiaddr": "0.0.0.0", "file": "undionly.kpxe", "to": "127.0.0.1:67"},
        ),
        ("DISCOVER", "52:54:00:00:00:02", {"arch": "uefi-x64", "port4011": False}),
        (
            "OFFER",
            "52:54:00:00:00:02",
            {"yiaddr": "0.0.0.0", "file": "snponly.efi", "to": "127.0.0.1:67"},
        ),
        ("DISCOVER", "52:54:00:00:00:03", {"arch": "bios", "port4011": False}),
        (
            "OFFER",
            "52:54:00:00:00:03",
            {
                "yiaddr": "0.0.0.0",
                "file": "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A03&arch=bios&boot=abcdef01",
                "to": "127.0.0.1:67",
            },
        ),
        ("INFORM", "52:54:00:00:00:05", {"arch": "bios", "port4011": True}),
        (
            "ACK",
            "52:54:00:00:00:05",
            {
                "yiaddr": "0.0.0.0",
                "file": "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A05&arch=bios&boot=00001234",
                "to": "10.0.0.2:67",
            },
        ),
    ],
}


class _Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def is_closing(self) -> bool:
        return False


class _Awaited:
    """The same answers, only through ``decide`` (no ``decide_now``): a task per request."""

    def __init__(self) -> None:
        self.table = StaticBackend(default=BootDecision(known=True, allow_boot=True))

    async def decide(self, query: BootQuery) -> BootDecision:
        await asyncio.sleep(0)
        return await self.table.decide(query)


async def _replies(mode: Mode, awaited: bool, sink: ListSink) -> dict[str, str | None]:
    srv = DhcpServer(
        mode=mode,
        boot=BootConfig(server_ip="10.0.0.1", http_base_url="http://10.0.0.1:8080"),
        backend=_Awaited()
        if awaited
        else StaticBackend(default=BootDecision(known=True, allow_boot=True)),
        sink=sink,
        address="10.0.0.1",
        leases=LeaseStore(None, ("10.0.0.10", "10.0.0.20")),
        network=FullModeConfig(subnet_mask="255.255.255.0", router="10.0.0.1", lease_seconds=600),
    )
    out: dict[str, str | None] = {}
    for name, data in REQUESTS.items():
        t = _Transport()
        srv._send = srv._send4011 = t  # type: ignore[assignment]
        srv._on_datagram(data, ("10.0.0.2", 67), name == "inform" and mode is Mode.PROXY)
        assert awaited or not srv._tasks  # at hand: answered on arrival, no task
        while srv._tasks:
            await asyncio.sleep(0)
        assert len(t.sent) <= 1
        out[name] = (
            hashlib.sha256(t.sent[0][0] + repr(t.sent[0][1]).encode()).hexdigest()
            if t.sent
            else None
        )
    if srv._flush is not None:
        srv._flush.cancel()
    return out


@pytest.mark.parametrize("awaited", [False, True], ids=["at_hand", "awaited"])
@pytest.mark.parametrize("mode", [Mode.FULL, Mode.PROXY])
def test_replies_unchanged(mode: Mode, awaited: bool) -> None:
    sink = ListSink()
    assert asyncio.run(_replies(mode, awaited, sink)) == EXPECTED[mode]
    assert [(e.kind, e.mac, dict(e.detail)) for e in sink.events] == EVENTS[mode]
