"""Admission: which DHCP requests get a backend call, so known machines are answered first.

A flood of DISCOVERs from random MACs (issue 10.12: 100,000 in 60 s) used to cost one backend
call (a database read in ``bronze serve``), one task, timeline events and a 30 s pool offer
each; the in-flight cap then dropped known machines' requests as readily as the flood's, and the
pool ran dry. Now each datagram is classified on arrival, before any task or event:

* **known**: the MAC is in the backend's list of MACs (``BootBackend.known_macs()``, refreshed
  every few seconds when the backend offers it: ``server.boot.BootPlane`` does), or a recent
  decision said ``known``, or it holds a bound lease (a pool client renewing). Known MACs go
  straight on; they share ``max_inflight`` only with a bounded number of unknown ones.
* **unknown**: everything else, admitted through one token bucket (``unknown_rate`` per second,
  ``unknown_burst``) and at most ``unknown_inflight`` at once; the rest is dropped and counted
  (``Drop.UNKNOWN_RATE`` / ``UNKNOWN_BUSY``), with no timeline event and no backend call.

In full mode the server also gives unknown MACs only short pool offers (``unknown_offer_seconds``)
and at most ``unknown_offers`` outstanding at once, so a flood cannot hold the whole pool
(``server.DhcpServer``). A spoofed known MAC is classified known: it gets the (cached) answer
that MAC gets, which costs little and gives nothing a real client of that MAC does not get.

Pure bookkeeping: the time comes in as an argument; nothing here does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from pxe.dhcp.decide import Drop


class Traffic(StrEnum):
    """The class of a DHCP request."""

    KNOWN = "known"
    """A MAC the backend knows (or that holds a lease): never rate-limited here."""
    UNKNOWN = "unknown"
    """Any other MAC: rate-limited and capped in flight."""


@dataclass
class Admission:
    unknown_rate: float = 50.0
    unknown_burst: int = 100
    unknown_inflight: int = 32
    learned_limit: int = 50_000
    learned_seconds: float = 600.0
    known: frozenset[str] = frozenset()
    """The backend's list (replaced on each refresh)."""
    inflight: int = 0
    """Unknown-class requests being decided now."""
    _learned: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _tokens: float = -1.0
    _at: float = 0.0

    def set_known(self, macs: Iterable[str]) -> None:
        self.known = frozenset(macs)

    def learn(self, mac: str, known: bool, now: float) -> None:
        """A decision for ``mac`` came back: remember known ones for ``learned_seconds`` (those
        not on the backend's list; a listed MAC is known while it stays listed)."""
        if not known:
            self._learned.pop(mac, None)
            return
        if mac in self.known:
            return  # on the backend's list already: nothing to remember
        self._learned.pop(mac, None)
        self._learned[mac] = now
        while len(self._learned) > self.learned_limit:
            self._learned.popitem(last=False)

    def classify(self, mac: str, now: float, has_lease: bool = False) -> Traffic:
        if has_lease or mac in self.known:
            return Traffic.KNOWN
        at = self._learned.get(mac)
        if at is not None and now - at < self.learned_seconds:
            return Traffic.KNOWN
        return Traffic.UNKNOWN

    def admit(self, mac: str, now: float, has_lease: bool = False) -> Traffic | Drop:
        """Classify and, for unknown MACs, take a token and an in-flight slot (give it back
        with ``done``)."""
        traffic = self.classify(mac, now, has_lease)
        if traffic is Traffic.KNOWN:
            return traffic
        if self.inflight >= self.unknown_inflight:
            return Drop.UNKNOWN_BUSY
        if self.unknown_rate > 0:
            if self._tokens < 0:
                self._tokens = float(self.unknown_burst)
            else:
                elapsed = max(0.0, now - self._at)
                self._tokens = min(
                    float(self.unknown_burst), self._tokens + elapsed * self.unknown_rate
                )
            self._at = now
            if self._tokens < 1.0:
                return Drop.UNKNOWN_RATE
            self._tokens -= 1.0
        self.inflight += 1
        return traffic

    def done(self, traffic: Traffic) -> None:
        if traffic is Traffic.UNKNOWN and self.inflight > 0:
            self.inflight -= 1


@dataclass
class UnknownOffers:
    """Outstanding pool offers to unknown MACs: at most ``limit``, each ``seconds`` long."""

    limit: int = 64
    seconds: float = 5.0
    _until: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def _prune(self, now: float) -> None:
        while self._until:
            mac, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[mac]

    def may_offer(self, mac: str, now: float) -> bool:
        self._prune(now)
        return mac in self._until or len(self._until) < self.limit

    def offered(self, mac: str, now: float) -> None:
        self._until.pop(mac, None)
        self._until[mac] = now + self.seconds

    def forget(self, mac: str) -> None:
        self._until.pop(mac, None)

    def __len__(self) -> int:
        return len(self._until)
