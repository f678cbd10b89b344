"""Counters and full-mode network parameters of the DHCP server (``pxe.dhcp.server``)."""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass, field

from pxe.dhcp.decide import Drop
from pxe.dhcp.packet import Opt


@dataclass
class DhcpStats:
    """Counters: everything received is either answered, dropped (by reason) or ignored."""

    received: int = 0
    answered: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    by_type: collections.Counter[str] = field(default_factory=collections.Counter)

    def drop(self, reason: Drop) -> None:
        self.dropped[reason.value] += 1


@dataclass(frozen=True)
class FullModeConfig:
    """Network parameters handed out in `full` mode."""

    subnet_mask: str = "255.255.255.0"
    router: str | None = None
    dns: tuple[str, ...] = ()
    lease_seconds: int = 3600


def lease_options(n: FullModeConfig) -> dict[int, bytes]:
    """Options 1, 51, 58, 59 (+ 3, 6) of every full-mode OFFER/ACK (RFC 2132)."""
    t = n.lease_seconds
    opts: dict[int, bytes] = {
        Opt.SUBNET_MASK: ipaddress.IPv4Address(n.subnet_mask).packed,
        Opt.LEASE_TIME: t.to_bytes(4, "big"),
        Opt.RENEWAL_T1: (t // 2).to_bytes(4, "big"),
        Opt.REBINDING_T2: (t * 7 // 8).to_bytes(4, "big"),
    }
    if n.router:
        opts[Opt.ROUTER] = ipaddress.IPv4Address(n.router).packed
    if n.dns:
        opts[Opt.DNS] = b"".join(ipaddress.IPv4Address(d).packed for d in n.dns)
    return opts
