"""Fixtures for the boot plane tests: an event loop thread, DHCP client helpers, a TFTP root."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxe.dhcp.packet import Op, Opt, Packet, encode, mac_bytes, parse, uuid_option
from tests.peers.netlab import LoopThread


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def pxe_request(
    mac: str = "52:54:00:00:00:01",
    *,
    mtype: int = 1,
    arch: int | None = 0,
    vendor: bytes | None = b"PXEClient:Arch:00000:UNDI:002001",
    ipxe: bool = False,
    giaddr: str = "127.0.0.1",
    xid: int = 0x1234,
    uuid: str | None = None,
    extra: dict[int, bytes] | None = None,
) -> bytes:
    opts: dict[int, bytes] = {Opt.MESSAGE_TYPE: bytes((mtype,))}
    if vendor is not None:
        opts[Opt.VENDOR_CLASS] = vendor
    if arch is not None:
        opts[Opt.CLIENT_ARCH] = arch.to_bytes(2, "big")
    if uuid:
        opts[Opt.CLIENT_UUID] = uuid_option(uuid)
    if ipxe:
        opts[Opt.USER_CLASS] = b"iPXE"
        opts[Opt.IPXE_ENCAP] = bytes((177, 1, 1))
    opts.update(extra or {})
    return encode(
        Packet(op=Op.BOOTREQUEST, xid=xid, chaddr=mac_bytes(mac), giaddr=giaddr, options=opts)
    )


class Client:
    """A DHCP relay-style client on 127.0.0.1: the server answers to giaddr:relay_port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    def recv(self, timeout: float = 2.0) -> Packet | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(4096)
        except TimeoutError:
            return None
        return parse(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client()
    yield c
    c.close()


@pytest.fixture
def tftp_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.bin").write_bytes(os.urandom(3000))
    (root / "exact.bin").write_bytes(os.urandom(1024))  # a multiple of 512: empty final block
    (root / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 7))
    (root / "empty.bin").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "inner.bin").write_bytes(b"inner")
    (tmp_path / "secret").write_text("SECRET-CONTENT")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "escape_dir").symlink_to(tmp_path)
    (root / "inside_link").symlink_to(root / "small.bin")
    return root
