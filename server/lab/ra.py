"""``python -m server.lab.ra IFACE``: an empty IPv6 router advertisement every 0.5 s on IFACE.

iPXE waits ~13 s for IPv6 autoconfiguration unless a router advertisement arrives; one with no
managed/other flags and lifetime 0 ends that wait at once and routes nothing. The lab runs this
inside its namespace (``ip netns exec``), so it only ever reaches the lab's bridge.
"""

from __future__ import annotations

import socket
import struct
import sys
import time


def main(interface: str, interval: float = 0.5) -> None:
    ifindex = socket.if_nametoindex(interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)
    while True:
        try:
            sock.sendto(ra, ("ff02::1", 0, 0, ifindex))
        except OSError:
            pass  # no link-local address yet: try again
        time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1])
