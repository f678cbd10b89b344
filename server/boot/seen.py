"""What DHCP told the boot plane about each MAC's latest boot: the address and the boot id.

The DHCP server (``pxe.dhcp``, in-process or a remote ``bronze pxe`` posting its timeline)
reports every ACK to the timeline sink with the address it gave (``yiaddr``; 0.0.0.0 in proxy
mode) and the boot file it handed out. For iPXE that file is the script URL, which carries
``boot=<id>`` (the DHCP transaction id, ``pxe.dhcp.decide.script_url``). The boot plane keeps
the latest (boot id, address) per MAC here, in memory, bounded, per replica; ``/boot.ipxe``
binds an enrollment token to it (``server.boot.plan.token_binding``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from server.boot.plan import BOOT_ID_RE, SeenLease

ACK = "ACK"
ZERO = "0.0.0.0"  # noqa: S104 - an address in a packet, not a bind


def lease_of(kind: str, detail: Mapping[str, Any]) -> SeenLease | None:
    """The lease an ACK event reports, None for other events or a URL without ``boot=``."""
    if kind != ACK:
        return None
    file = detail.get("file")
    if not isinstance(file, str) or "boot=" not in file:
        return None
    values = parse_qs(urlsplit(file).query).get("boot", [])
    if len(values) != 1 or not BOOT_ID_RE.match(values[0]):
        return None
    ip = detail.get("yiaddr")
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

    def observe(self, mac: str, kind: str, detail: Mapping[str, Any]) -> None:
        lease = lease_of(kind, detail)
        if lease is None:
            return
        with self._lock:
            self._by_mac.pop(mac, None)
            self._by_mac[mac] = (self._clock(), lease)
            while len(self._by_mac) > self.capacity:
                self._by_mac.popitem(last=False)

    def get(self, mac: str) -> SeenLease | None:
        with self._lock:
            entry = self._by_mac.get(mac)
        if entry is None or self._clock() - entry[0] > self.ttl:
            return None
        return entry[1]
