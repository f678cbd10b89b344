"""What DHCP told the boot plane about each MAC's latest boot: the address and the boot id.

The DHCP server (``pxe.dhcp``, in-process or a remote ``bronze pxe`` posting its timeline)
reports every ACK (and OFFER) to the timeline sink with the address it gave (``yiaddr``; 0.0.0.0
in proxy mode) and the boot file it handed out. For iPXE that file is the script URL, which carries
``boot=<id>`` (the DHCP transaction id, ``pxe.dhcp.decide.script_url``). The boot plane keeps
the latest (boot id, address) per MAC here, in memory, bounded, per replica; ``/boot.ipxe``
binds an enrollment token to it (``server.boot.plan.token_binding``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from server.boot.plan import BOOT_ID_RE, SeenLease

ACK, OFFER = "ACK", "OFFER"
ZERO = "0.0.0.0"  # noqa: S104 - an address in a packet, not a bind


def lease_of(kind: str, detail: Mapping[str, Any]) -> SeenLease | None:
    """The lease an ACK event reports (or a ProxyDHCP OFFER: iPXE takes its script URL from it
    and sends no REQUEST to us), None for other events or a URL without ``boot=``."""
    ip = detail.get("yiaddr")
    if not (kind == ACK or (kind == OFFER and ip == ZERO)):
        return None
    file = detail.get("file")
    if not isinstance(file, str) or "boot=" not in file:
        return None
    values = parse_qs(urlsplit(file).query).get("boot", [])
    if len(values) != 1 or not BOOT_ID_RE.match(values[0]):
        return None
    return SeenLease(values[0], ip if isinstance(ip, str) and ip != ZERO else None)


class SeenLeases:
    """MAC -> latest ``SeenLease``; at most ``capacity`` MACs, entries older than ``ttl``
    seconds are forgotten. Thread-safe (fed from the event loop and from request threads)."""

    def __init__(
        self,
        capacity: int = 50_000,
        ttl: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity, self.ttl, self._clock = capacity, ttl, clock
        self._by_mac: OrderedDict[str, tuple[float, SeenLease]] = OrderedDict()
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self.max_waiters = 256

    def observe(self, mac: str, kind: str, detail: Mapping[str, Any]) -> None:
        lease = lease_of(kind, detail)
        if lease is None:
            return
        with self._lock:
            self._by_mac.pop(mac, None)
            self._by_mac[mac] = (self._clock(), lease)
            while len(self._by_mac) > self.capacity:
                self._by_mac.popitem(last=False)
            waiters = self._waiters.pop(mac, [])
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_wake, fut)

    def get(self, mac: str) -> SeenLease | None:
        with self._lock:
            entry = self._by_mac.get(mac)
        if entry is None or self._clock() - entry[0] > self.ttl:
            return None
        return entry[1]

    async def wait(self, mac: str, boot: str, timeout: float) -> SeenLease | None:
        """The lease of ``mac`` once DHCP has reported boot ``boot`` (None after ``timeout``).

        A script URL names its boot, so its DHCP ACK is known to exist; a remote ``bronze pxe``
        may post it a moment after iPXE already asks for the script."""
        deadline = time.monotonic() + timeout
        while True:
            lease = self.get(mac)
            left = deadline - time.monotonic()
            if (lease is not None and lease.boot == boot) or left <= 0:
                return lease
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                if sum(len(w) for w in self._waiters.values()) >= self.max_waiters:
                    return lease  # a flood of made-up boots: no waiting for them
                self._waiters.setdefault(mac, []).append((loop, fut))
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    waiting = self._waiters.get(mac, [])
                    if (loop, fut) in waiting:
                        waiting.remove((loop, fut))
                    if not waiting:
                        self._waiters.pop(mac, None)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
