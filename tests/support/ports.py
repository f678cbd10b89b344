"""Free ports on the loopback address for servers a test starts.

The kernel picks a port that is free now; the caller binds it moments later. Another process
could take it in between, which is rare enough on a test machine and fails loudly (bind error)
rather than silently.
"""

from __future__ import annotations

import socket

LOCAL = "127.0.0.1"


def free_port(kind: int = socket.SOCK_STREAM, host: str = LOCAL) -> int:
    """A free TCP port (or ``kind=socket.SOCK_DGRAM``: UDP) on ``host``."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_udp_port(kind: int = socket.SOCK_DGRAM, host: str = LOCAL) -> int:
    """A free UDP port on ``host``: :func:`free_port` with UDP as the default ``kind``.

    The boot-plane tests import it as ``free_port`` (their servers are UDP) and pass
    ``socket.SOCK_STREAM`` (1) where they need a TCP port nobody listens on."""
    return free_port(kind, host)
