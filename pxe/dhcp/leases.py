"""Leases of the `full` mode DHCP server, persisted to a JSON file.

RFC 2131 section 4.3: an OFFER reserves an address for a short time; a REQUEST that names it
binds it for the lease time; RELEASE frees it; DECLINE marks it unusable (another host answered
ARP for it) for a quarantine period. Static reservations (from the backend) always win: the
address is the machine's, and the pool never hands it to anyone else while leased.

The file is written atomically (temp file + rename) shortly after a change and on stop, so a
restart keeps the bound leases; at most `flush_delay` seconds of changes can be lost in a crash,
and those clients simply re-request (INIT-REBOOT) their address.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OFFER_SECONDS = 30.0


def ip_int(ip: str) -> int:
    """Dotted quad to int (strict: raises OSError/ValueError on anything else)."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")


def int_ip(n: int) -> str:
    return socket.inet_ntop(socket.AF_INET, n.to_bytes(4, "big"))


DECLINE_SECONDS = 600.0


@dataclass(frozen=True)
class Lease:
    """One address held by one MAC until `expires` (clock seconds, wall time)."""

    mac: str
    ip: str
    expires: float
    bound: bool


class LeaseStore:
    """In-memory leases with optional JSON persistence and an optional dynamic pool."""

    def __init__(
        self,
        path: Path | None = None,
        pool: tuple[str, str] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.path = path
        self.clock = clock or time.time
        self._pool_start = ip_int(pool[0]) if pool else 0
        self._pool_end = ip_int(pool[1]) if pool else -1
        self._next = self._pool_start
        self.by_mac: dict[str, Lease] = {}
        self.by_ip: dict[str, Lease] = {}
        self.declined: dict[str, float] = {}
        self.dirty = False
        if path is not None and path.exists():
            self._load(path)

    # -- persistence ---------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            for item in data.get("leases", []):
                lease = Lease(str(item["mac"]), str(item["ip"]), float(item["expires"]), True)
                ip_int(lease.ip)
                self._put(lease)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # noqa: B014
            # NOTE: a corrupt file must not stop the DHCP server; clients will re-request.
            log.warning("lease file unreadable, starting empty path=%s error=%s", path, exc)

    def save(self) -> None:
        if self.path is None:
            return
        now = self.clock()
        leases = [asdict(x) for x in self.by_mac.values() if x.bound and x.expires > now]
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": 1, "leases": leases}))
        os.replace(tmp, self.path)
        self.dirty = False

    # -- queries -------------------------------------------------------------------------------
    def in_pool(self, ip: str) -> bool:
        return self._pool_start <= ip_int(ip) <= self._pool_end

    def _free_for(self, ip: str, mac: str) -> bool:
        now = self.clock()
        if self.declined.get(ip, 0.0) > now:
            return False
        held = self.by_ip.get(ip)
        return held is None or held.mac == mac or held.expires <= now

    def pick(self, mac: str, requested: str | None, static: str | None) -> str | None:
        """The address to offer: the reservation, the current lease, the requested, a free one."""
        if static is not None:
            return static
        now = self.clock()
        cur = self.by_mac.get(mac)
        if cur is not None and cur.expires > now and self.in_pool(cur.ip):
            return cur.ip
        if requested is not None and self.in_pool(requested) and self._free_for(requested, mac):
            return requested
        size = self._pool_end - self._pool_start + 1
        for _ in range(max(0, size)):
            cand = int_ip(self._next)
            self._next = self._next + 1 if self._next < self._pool_end else self._pool_start
            if self._free_for(cand, mac):
                return cand
        return None

    def can_bind(self, mac: str, ip: str, static: str | None) -> bool:
        if static is not None:
            return ip == static
        return self.in_pool(ip) and self._free_for(ip, mac)

    # -- changes -------------------------------------------------------------------------------
    def _put(self, lease: Lease) -> None:
        old = self.by_mac.get(lease.mac)
        if old is not None and self.by_ip.get(old.ip) is old:
            del self.by_ip[old.ip]
        prev = self.by_ip.get(lease.ip)
        if prev is not None and prev.mac != lease.mac:
            self.by_mac.pop(prev.mac, None)
        self.by_mac[lease.mac] = lease
        self.by_ip[lease.ip] = lease

    def holds(self, mac: str) -> bool:
        """``mac`` has a bound, unexpired lease (a client we already serve)."""
        cur = self.by_mac.get(mac)
        return cur is not None and cur.bound and cur.expires > self.clock()

    def offer(self, mac: str, ip: str, seconds: float = OFFER_SECONDS) -> None:
        cur = self.by_mac.get(mac)
        if cur is not None and cur.bound and cur.ip == ip and cur.expires > self.clock():
            return  # keep the bound lease as is
        self._put(Lease(mac, ip, self.clock() + seconds, False))

    def bind(self, mac: str, ip: str, lease_seconds: float) -> Lease:
        lease = Lease(mac, ip, self.clock() + lease_seconds, True)
        self._put(lease)
        self.dirty = True
        return lease

    def forget_offer(self, mac: str) -> None:
        cur = self.by_mac.get(mac)
        if cur is not None and not cur.bound:
            self._remove(cur)

    def release(self, mac: str) -> Lease | None:
        cur = self.by_mac.get(mac)
        if cur is not None:
            self._remove(cur)
            self.dirty = True
        return cur

    def decline(self, mac: str, ip: str) -> None:
        self.declined[ip] = self.clock() + DECLINE_SECONDS
        cur = self.by_mac.get(mac)
        if cur is not None and cur.ip == ip:
            self._remove(cur)
            self.dirty = True

    def _remove(self, lease: Lease) -> None:
        self.by_mac.pop(lease.mac, None)
        if self.by_ip.get(lease.ip) is lease:
            del self.by_ip[lease.ip]
