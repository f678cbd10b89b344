"""Broadcast DHCP on a real link: a crafted BIOS PXE client (no iPXE) in a client namespace.

There is no non-iPXE BIOS option ROM to boot, so the firmware's first stage is played by raw
Ethernet frames (built with scapy, sent on an AF_PACKET socket inside the client namespace):
broadcast DISCOVER from 0.0.0.0:68 -> our OFFER broadcast on the bridge; then the client fetches
the offered boot file over TFTP with curl from its namespace. This exercises the parts loopback
cannot: the 255.255.255.255 listener with SO_BINDTODEVICE and broadcast replies.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from pxe.backend import BootDecision, ListSink, StaticBackend, TimelineKind
from pxe.dhcp.decide import Mode
from pxe.dhcp.packet import MessageType, Op, Opt, Packet, encode, mac_bytes, parse
from pxe.service import PxeService, PxeSettings
from tests.peers.netlab import Lab, LoopThread, require_tools, setns

pytestmark = pytest.mark.netns
MAC = "52:54:00:c0:ff:01"


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_tools("ip", "curl")
    with Lab() as lab:
        yield lab


def raw_exchange(ns: str, frame: bytes, want_xid: int, timeout: float = 3.0) -> list[Packet]:
    """Sends one Ethernet frame on eth0 of `ns`; returns DHCP replies with `want_xid`."""
    out: list[Packet] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            setns(ns)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            s.bind(("eth0", 0))
            s.settimeout(0.2)
            s.send(frame)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not out:
                try:
                    data = s.recv(4096)
                except TimeoutError:
                    continue
                pkt = Ether(data)
                if UDP in pkt and pkt[UDP].dport == 68:
                    reply = parse(bytes(pkt[UDP].payload))
                    if reply.xid == want_xid:
                        out.append(reply)
            s.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout + 5)
    if errors:
        raise errors[0]
    return out


def discover_frame(xid: int) -> bytes:
    dhcp = Packet(
        op=Op.BOOTREQUEST,
        xid=xid,
        chaddr=mac_bytes(MAC),
        flags=0x8000,
        options={
            Opt.MESSAGE_TYPE: b"\x01",
            Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001",
            Opt.CLIENT_ARCH: b"\x00\x00",
            Opt.CLIENT_NII: b"\x01\x02\x01",
            Opt.CLIENT_UUID: b"\x00" + bytes(range(16)),
        },
    )
    frame = (
        Ether(src=MAC, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")  # noqa: S104
        / UDP(sport=68, dport=67)
        / encode(dhcp)
    )
    return bytes(frame)


@pytest.mark.parametrize("mode", [Mode.FULL, Mode.PROXY], ids=["full", "proxy"])
def test_bios_first_stage_broadcast_then_tftp(lab: Lab, tmp_path: Path, mode: Mode) -> None:
    cns = lab.add_veth_ns("c", f"{lab.prefix}.2")
    sink = ListSink()
    settings = PxeSettings(
        enabled=True,
        mode=mode,
        interface=lab.bridge,
        address=lab.server_ip,
        http_base_url=f"http://{lab.server_ip}:8080",
        tftp_root=Path("/usr/lib/ipxe"),
        pool_start=f"{lab.prefix}.100",
        pool_end=f"{lab.prefix}.150",
        state_dir=tmp_path,
    )
    backend = StaticBackend(default=BootDecision(allow_boot=True))
    service = PxeService(settings, backend, sink)
    loop = LoopThread(netns=lab.ns)
    loop.run(service.start())
    try:
        replies = raw_exchange(cns, discover_frame(0xC0FFEE), 0xC0FFEE)
        assert replies, f"no OFFER; dhcp={service.dhcp.stats}"
        offer = replies[0]
        assert offer.message_type is MessageType.OFFER
        assert offer.file == b"undionly.kpxe" and offer.siaddr == lab.server_ip
        assert offer.pxe_options == {6: b"\x08"}
        if mode is Mode.FULL:
            assert offer.yiaddr.startswith(f"{lab.prefix}.1")
        else:
            assert offer.yiaddr == "0.0.0.0"  # noqa: S104
        # the first stage fetches the boot file over TFTP (curl runs in the client namespace)
        out = tmp_path / "undionly.kpxe"
        res = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                cns,
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--tftp-blksize",
                "1432",
                "-o",
                str(out),
                f"tftp://{lab.server_ip}/undionly.kpxe",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert out.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
        kinds = [e.kind for e in sink.events]
        assert kinds[:2] == [TimelineKind.DISCOVER, TimelineKind.OFFER]
        assert TimelineKind.TFTP_COMPLETE in kinds
    finally:
        loop.run(service.stop())
        loop.close()
