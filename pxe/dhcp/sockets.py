"""Socket helpers of the DHCP server.

`udp_socket` never binds the wildcard; with an interface it sets SO_BINDTODEVICE, so a socket
bound to 255.255.255.255 receives the broadcasts of that link only (the way to hear clients
without an address while never listening on 0.0.0.0).
"""

from __future__ import annotations

import socket

from pxe.errors import PxeError


def udp_socket(addr: str, port: int, interface: str | None, *, broadcast: bool) -> socket.socket:
    if addr in ("0.0.0.0", ""):  # noqa: S104
        raise PxeError("refusing to bind the wildcard address; give an interface address")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
        # 512 KiB: absorbs bursts; larger would turn an overload into seconds of queueing, and
        # a DHCP answer seconds late is useless (clients retransmit after ~4 s).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 512 << 10)
        sock.bind((addr, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
