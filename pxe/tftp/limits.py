"""Per-client bounds for the TFTP server: a session cap and a request-rate limit per source IP.

The server-wide session cap (``max_sessions``) protects the process; without a per-client bound
one source address could hold every slot (issue 10.11: one address held all 500 sessions and
every other client got "busy"). A PXE ROM or iPXE fetches one file at a time (two with a tsize
probe), so a handful of transfers per address is plenty; a flood from one address is held to
that handful and every other address still finds free slots.

Requests on the listening port are also rate-limited per address with a token bucket (``rate``
per second, ``burst`` at once): a flood of RRQs (or garbage) from one address is dropped
silently before any parsing, path resolution or file open, and without an error reply (a reply
would let a spoofed source turn us into an amplifier). Buckets are kept for at most
``max_clients`` addresses; when full, the idle ones (bucket refilled, no session) are forgotten
first, so a spray of spoofed addresses cannot grow memory without bound.

Pure bookkeeping: time comes in as an argument (``now``), nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Refusal(StrEnum):
    """Why a request from one client was not served."""

    RATE = "rate_limited"
    """The address sent requests faster than its bucket refills: dropped without a reply."""
    CLIENT_SESSIONS = "client_sessions"
    """The address already has ``per_client`` transfers in flight: error "busy" reply."""


@dataclass
class _Bucket:
    tokens: float
    at: float
    sessions: int = 0


@dataclass
class ClientLimits:
    """``per_client`` transfers at once per IP (0: no cap); ``rate`` requests/s with ``burst``
    (rate 0: no rate limit)."""

    per_client: int = 8
    rate: float = 20.0
    burst: int = 40
    max_clients: int = 10_000
    _clients: dict[str, _Bucket] = field(default_factory=dict)
    dropped: int = 0
    """Requests dropped by the rate limit."""

    def request(self, ip: str, now: float) -> Refusal | None:
        """A datagram from ``ip`` on the listening port: None to go on, or RATE to drop it."""
        if self.rate <= 0:
            return None
        b = self._clients.get(ip)
        if b is None:
            self._make_room()
            b = self._clients[ip] = _Bucket(float(self.burst), now)
        else:
            b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens < 1.0:
            self.dropped += 1
            return Refusal.RATE
        b.tokens -= 1.0
        return None

    def may_open(self, ip: str) -> Refusal | None:
        """Before opening a session for ``ip``: None, or CLIENT_SESSIONS."""
        b = self._clients.get(ip)
        if self.per_client > 0 and b is not None and b.sessions >= self.per_client:
            return Refusal.CLIENT_SESSIONS
        return None

    def opened(self, ip: str, now: float) -> None:
        b = self._clients.get(ip)
        if b is None:
            self._make_room()
            b = self._clients[ip] = _Bucket(float(self.burst), now)
        b.sessions += 1

    def closed(self, ip: str) -> None:
        b = self._clients.get(ip)
        if b is not None and b.sessions > 0:
            b.sessions -= 1

    def sessions(self, ip: str) -> int:
        b = self._clients.get(ip)
        return b.sessions if b is not None else 0

    def _make_room(self) -> None:
        if len(self._clients) < self.max_clients:
            return
        idle = [ip for ip, b in self._clients.items() if b.sessions == 0]
        for ip in idle[: max(1, len(idle) // 2)]:
            del self._clients[ip]
        if len(self._clients) >= self.max_clients:  # all busy: forget the oldest bucket
            del self._clients[next(iter(self._clients))]
