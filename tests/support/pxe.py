"""Boot-plane test helpers: a PXE DHCP request builder and a relay-style DHCP client on
127.0.0.1 (the server answers to giaddr, i.e. this client's port)."""

from __future__ import annotations

import socket

from pxe.dhcp.packet import Op, Opt, Packet, encode, mac_bytes, parse, uuid_option


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
