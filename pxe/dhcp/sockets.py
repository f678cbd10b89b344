"""Socket and coroutine helpers of the DHCP server.

`udp_socket` never binds the wildcard; with an interface it sets SO_BINDTODEVICE, so a socket
bound to 255.255.255.255 receives the broadcasts of that link only (the way to hear clients
without an address while never listening on 0.0.0.0). `resume` continues a handler coroutine
that was started eagerly and then suspended (what a Task would do).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Coroutine
from typing import Any

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


async def resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Continues a coroutine that was started by hand and suspended on `waiting` (a future,
    or None for a bare yield), the way an asyncio Task would have."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # The coroutine's own `yield` marked the future as being waited on; a Task
                # clears that flag before waiting, and so must we (or awaiting it again fails).
                waiting._asyncio_future_blocking = False
                await waiting
        except asyncio.CancelledError:
            with contextlib.suppress(StopIteration, asyncio.CancelledError):
                coro.throw(asyncio.CancelledError())
            coro.close()
            raise
        except Exception:  # noqa: BLE001, S110 - the coroutine sees the outcome when resumed
            pass
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
