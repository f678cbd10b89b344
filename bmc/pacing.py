"""Pacing, limits and kept sessions: the clock, the policy's knobs, and one slot per BMC.

Part of the power policy (:mod:`bmc.actions`; Redfish DSP0266, IPMI 2.0). A BMC is a small
embedded computer with few session slots, so the policy is careful with it:

- **One operation at a time per BMC** (``address:port``): each BMC has a :class:`Slot` whose
  lock serializes its operations and which remembers the last call, so that two calls to the
  same BMC are at least ``min_interval`` seconds apart.
- **One session per BMC, reused.** A driver (an authenticated IPMI session, a Redfish
  connection) is parked in its slot at the end of an operation and serves the next one on the
  same BMC (:class:`SessionSlots`). Sessions idle for ``session_idle`` seconds are closed by a
  reaper thread, and at most ``max_sessions`` are kept (each holds a socket).

Time comes from an injected :class:`Clock`, so all of this is unit-tested without sleeping.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bmc.driver import PowerDriver
from bmc.types import BmcEndpoint


class Clock(Protocol):
    """Time as the policy sees it; tests inject a fake one."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass(frozen=True)
class PowerPolicy:
    """Knobs of the policy (seconds)."""

    max_attempts: int = 4
    """Tries per step (pre-read, command) for transient errors."""
    backoff_initial: float = 0.5
    backoff_factor: float = 2.0
    backoff_max: float = 8.0
    jitter: float = 0.25
    """Each backoff is scaled by a random factor in [1 - jitter, 1 + jitter]."""
    deadline: float = 90.0
    """Whole operation, unless the call passes its own."""
    read_deadline: float = 20.0
    """Deadline of a plain power-state read."""
    settle_timeout: float = 60.0
    """How long a written state may take to read back."""
    poll_interval: float = 2.0
    """Longest gap between two read-backs: the first is immediate, the next half this later."""
    min_interval: float = 0.2
    """Minimum gap between two calls to the same BMC."""
    max_concurrency: int = 32
    session_idle: float = 20.0
    """Sessions kept between operations are closed after this many idle seconds (BMCs expire
    idle IPMI sessions after 30-60 s and have few session slots); 0 closes each session
    at the end of its operation."""
    max_sessions: int = 4096
    """At most this many sessions are kept between operations (each holds a socket); past it a
    session is closed at the end of its operation, as with ``session_idle=0``."""

    def backoff(self, failures: int, rng: Callable[[], float]) -> float:
        """Delay after the ``failures``-th failure (1-based)."""
        base = min(self.backoff_max, self.backoff_initial * self.backoff_factor ** (failures - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rng() - 1)))


@dataclass
class Slot:
    """Per-BMC serialization and pacing, and the session kept between operations."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    last_call: float | None = None
    driver: PowerDriver | None = None
    """Parked by the last operation; only for ``endpoint`` (same credentials and settings)."""
    endpoint: BmcEndpoint | None = None
    idle_since: float = 0.0

    def take(
        self, endpoint: BmcEndpoint, discard: Callable[[PowerDriver], None]
    ) -> PowerDriver | None:
        """The parked driver if it was built for ``endpoint``; a mismatched one goes to
        ``discard`` (which closes it)."""
        drv, self.driver = self.driver, None
        if drv is not None and self.endpoint != endpoint:
            discard(drv)
            drv = None
        return drv


def close_quietly(drv: PowerDriver) -> None:
    """Close a driver; drivers must not raise on close, and if one does it is ignored."""
    try:
        drv.close()
    except Exception:  # noqa: S110 - drivers must not raise on close; belt and braces
        pass


class SessionSlots:
    """The slots of all BMCs: parking sessions, the reaper thread, the ``max_sessions`` cap."""

    def __init__(self, policy: PowerPolicy, clock: Clock) -> None:
        self.policy, self.clock = policy, clock
        self._slots: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    def slot(self, key: str) -> Slot:
        with self._lock:
            return self._slots.setdefault(key, Slot())

    def start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None or self._stop.is_set():
                return
            self._reaper = threading.Thread(
                target=self._reap_forever, name="bmc-session-reaper", daemon=True
            )
            self._reaper.start()

    def _reap_forever(self) -> None:
        while not self._stop.wait(max(self.policy.session_idle / 4, 0.05)):
            self.reap_idle(None)

    def stop_reaper(self) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(5)

    def reap_idle(self, idle: float | None) -> int:
        """Close sessions idle for ``idle`` seconds (default ``session_idle``); busy BMCs are
        skipped. Returns how many were closed."""
        idle = self.policy.session_idle if idle is None else idle
        now = self.clock.monotonic()
        with self._lock:
            slots = list(self._slots.values())
        expired: list[PowerDriver] = []
        for slot in slots:
            if slot.driver is None or now - slot.idle_since < idle:
                continue
            if not slot.lock.acquire(blocking=False):
                continue  # an operation is using it
            try:
                drv, slot.driver = slot.driver, None
            finally:
                slot.lock.release()
            if drv is not None:
                expired.append(drv)
        if len(expired) > 1:
            # A polite close is one round trip (IPMI Close Session) that waits up to 1 s for a
            # BMC that went away: close many at once, not one after the other.
            with concurrent.futures.ThreadPoolExecutor(
                min(len(expired), 64), thread_name_prefix="bmc-close"
            ) as pool:
                list(pool.map(close_quietly, expired))
        elif expired:
            close_quietly(expired[0])
        return len(expired)

    def open_sessions(self) -> int:
        """Sessions parked between operations."""
        with self._lock:
            return self._parked()

    def _parked(self) -> int:
        return sum(1 for s in self._slots.values() if s.driver is not None)

    def park(self, slot: Slot, drv: PowerDriver, endpoint: BmcEndpoint) -> bool:
        """Keep ``drv`` in ``slot`` for the next operation, unless reuse is off or
        ``max_sessions`` are kept already (then the caller closes it)."""
        if self.policy.session_idle <= 0:
            return False
        with self._lock:  # parks are serialized, so the cap is exact
            # Fewer slots than the cap: no need to count (an O(BMCs) walk per operation).
            cap = self.policy.max_sessions
            if len(self._slots) > cap and self._parked() >= cap:
                return False
            slot.driver, slot.endpoint = drv, endpoint
            slot.idle_since = self.clock.monotonic()
        return True
