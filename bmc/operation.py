"""One power operation's bookkeeping: paced calls, session reuse, retries, read-back polling.

Part of the power policy (:mod:`bmc.actions`; Redfish DSP0266, IPMI 2.0). An
:class:`Operation` is what a verified action sequence (:mod:`bmc.sequences`) talks to instead
of the driver:

- :meth:`Operation.once` makes one BMC call, at least ``min_interval`` after the last one to
  the same BMC. If the first call on a session kept from an earlier operation fails (BMC
  restarted, session expired), the session is dropped and the call is made again at once on a
  fresh one (re-authentication), before the retry policy counts it as an attempt.
- :meth:`Operation.call` retries transient errors only (:class:`~bmc.errors.BmcTransientError`)
  with exponential backoff and jitter, at most ``max_attempts`` tries, never past the
  operation's deadline. Fatal errors return at once.
- :meth:`Operation.wait_for` reads back until the target is seen or the settle time (bounded by
  the deadline) passes: first at once, then 1/2, 1, 1, ... ``poll_interval`` apart.

The result of an operation is a :class:`BmcResult`; errors are carried in it, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from bmc.driver import PowerDriver
from bmc.errors import (
    BmcDeadlineExceeded,
    BmcError,
    BmcFatalError,
    BmcProtocolError,
    BmcTransientError,
)
from bmc.explain import describe
from bmc.pacing import Clock, Slot, close_quietly
from bmc.types import BmcEndpoint, BootSetting, PowerState

if TYPE_CHECKING:
    from bmc.actions import BmcController

# The policy logs under one name, as docs/power.md says ("logged at DEBUG by bmc.actions").
LOG = logging.getLogger("bmc.actions")
T = TypeVar("T")


@dataclass(frozen=True)
class BmcResult:
    """What an operation did. ``ok`` is ``error is None``."""

    bmc: str
    operation: str
    state: PowerState
    attempts: int
    elapsed: float
    changed: bool = False
    polls: int = 0
    boot: BootSetting | None = None
    error: BmcError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def message(self) -> str | None:
        """The error as an operator sentence (:func:`bmc.explain.describe`), or ``None``."""
        if self.error is None:
            return None
        return describe(self.error, self.attempts, self.elapsed, self.bmc)

    def raise_for_error(self) -> BmcResult:
        if self.error is not None:
            raise self.error
        return self


class Operation:
    """One operation's bookkeeping: driver, attempts, deadline."""

    def __init__(
        self, ctl: BmcController, endpoint: BmcEndpoint, slot: Slot, deadline: float, name: str
    ) -> None:
        self.ctl = ctl
        self.endpoint = endpoint
        self.slot = slot
        self.deadline = deadline
        self.name = name
        self.attempts = 0
        self.polls = 0
        self.start = ctl.clock.monotonic()
        self._driver: PowerDriver | None = None
        self._reused = False
        """The current driver came from the slot and has not answered in this operation yet."""
        self.reauths = 0

    @property
    def clock(self) -> Clock:
        return self.ctl.clock

    def driver(self) -> PowerDriver:
        if self._driver is None:
            reuse = self.ctl.policy.session_idle > 0
            parked = self.slot.take(self.endpoint, self._discard) if reuse else None
            self._reused = parked is not None
            self._driver = parked if parked is not None else self.ctl.factory(self.endpoint)
        return self._driver

    def drop_driver(self) -> None:
        drv, self._driver = self._driver, None
        self._reused = False
        if drv is not None:
            self._discard(drv)

    def _discard(self, drv: PowerDriver) -> None:
        close_quietly(drv)

    def close(self) -> None:
        """End of the operation: park the session for the next one, or close it."""
        drv, self._driver = self._driver, None
        if drv is None:
            return
        if self.ctl.park(self.slot, drv, self.endpoint):
            self.ctl._start_reaper()
        else:
            self._discard(drv)

    def _pace(self) -> None:
        wait = self.pace_wait()
        if wait > 0:
            self.clock.sleep(wait)

    def pace_wait(self) -> float:
        """Seconds to wait before the next call to this BMC (``min_interval`` after the last)."""
        if self.slot.last_call is None:
            return 0.0
        return self.slot.last_call + self.ctl.policy.min_interval - self.clock.monotonic()

    def reauthenticate(self, exc: BmcError) -> bool:
        """After a failed call: whether it ran on a kept session, now dropped, so that the call
        is made again at once on a fresh one (BMC restarted, session expired)."""
        if not self._reused:
            return False
        LOG.debug(
            "bmc reused session failed bmc=%s error=%s; re-authenticating",
            self.endpoint.key,
            type(exc).__name__,
        )
        self.drop_driver()
        self.reauths += 1
        return True

    def unexpected(self, exc: Exception) -> BmcProtocolError:
        return BmcProtocolError(bmc=self.endpoint.key, detail=f"unexpected {type(exc).__name__}")

    def retry_delay(self, exc: BmcTransientError, failures: int) -> float:
        """After the ``failures``-th transient failure: the backoff before the next try, or the
        error (``exc`` itself, or :class:`BmcDeadlineExceeded`) raised when there is none."""
        policy = self.ctl.policy
        self.drop_driver()
        LOG.debug(
            "bmc transient bmc=%s op=%s attempt=%d error=%s",
            self.endpoint.key,
            self.name,
            self.attempts,
            exc,
        )
        if failures >= policy.max_attempts:
            raise exc
        delay = policy.backoff(failures, self.ctl.rng)
        now = self.clock.monotonic()
        if now + delay >= self.deadline:
            raise BmcDeadlineExceeded(
                bmc=self.endpoint.key,
                operation=self.name,
                attempts=self.attempts,
                seconds=now - self.start,
                last=str(exc),
                cause=exc,
            ) from None
        return delay

    def read_back_failed(self, exc: BmcTransientError) -> None:
        self.drop_driver()
        LOG.debug("bmc verify read failed bmc=%s error=%s", self.endpoint.key, exc)

    def once(self, fn: Callable[[PowerDriver], T]) -> T:
        """One BMC call, paced; unknown exceptions become :class:`BmcProtocolError`."""
        self._pace()
        with self.guarded():
            driver = self.driver()
            try:
                return fn(driver)
            except BmcError as exc:
                if not self.reauthenticate(exc):
                    raise
                return fn(self.driver())
            finally:
                self._reused = False

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """Around one BMC call (blocking or awaited): an exception that is not a
        :class:`BmcError` becomes :class:`BmcProtocolError`; the slot records when it ended."""
        try:
            yield
        except BmcError:
            raise
        except Exception as exc:
            raise self.unexpected(exc) from None
        finally:
            self.slot.last_call = self.clock.monotonic()

    def call(self, fn: Callable[[PowerDriver], T]) -> T:
        """``fn`` with retries for transient errors, within the deadline."""
        failures = 0
        while True:
            self.attempts += 1
            try:
                return self.once(fn)
            except BmcFatalError:
                raise
            except BmcTransientError as exc:
                failures += 1
                self.clock.sleep(self.retry_delay(exc, failures))

    def wait_for(
        self,
        read: Callable[[PowerDriver], T],
        done: Callable[[T], bool],
        settle: float,
        immediate: bool = True,
    ) -> tuple[T | None, bool]:
        """Poll ``read`` until ``done`` or the settle time (within the deadline) passes. Without
        ``immediate``, the first read waits half a poll interval too."""
        policy = self.ctl.policy
        until = min(self.clock.monotonic() + settle, self.deadline)
        last: T | None = None
        gap = policy.poll_interval / 2  # immediate read-back, then 1/2, 1, 1, ... apart
        if not immediate:
            self.clock.sleep(min(gap, max(until - self.clock.monotonic(), 0.0)))
            gap = min(gap * 2, policy.poll_interval)
        while True:
            self.polls += 1
            try:
                last = self.once(read)
            except BmcFatalError:
                raise
            except BmcTransientError as exc:
                self.read_back_failed(exc)
                last = None
            if last is not None and done(last):
                return last, True
            now = self.clock.monotonic()
            if now >= until:
                return last, False
            self.clock.sleep(min(gap, until - now))
            gap = min(gap * 2, policy.poll_interval)
