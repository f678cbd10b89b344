"""The power read and the verified power action on the event loop, for drivers that can
(:class:`~bmc.driver.AsyncPowerDriver`: IPMI).

The same policy as :mod:`bmc.operation` and :mod:`bmc.sequences` (pacing, re-authentication of
a kept session, retries with backoff within the deadline, read-back polling, "already there"
re-checks), sharing their decisions; only the waiting differs: a call is an awaited exchange
and a pause an ``asyncio.sleep``, so a bulk operation of hundreds of BMCs costs no thread per
BMC and no thread wake-up per message (docs/performance.md); the RMCP+ handshake of a new
session too (:meth:`bmc.ipmi.IpmiDriver.open_session_async`). What blocks stays on a thread:
the polite close of a dropped session (a round trip that may wait for a BMC gone away).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from bmc.driver import AsyncPowerDriver, PowerDriver
from bmc.errors import BmcError, BmcFatalError, BmcTransientError
from bmc.operation import BmcResult, Operation
from bmc.pacing import close_quietly
from bmc.sequences import IDEMPOTENT, LOG, command, verified
from bmc.types import PowerAction, PowerState

T = TypeVar("T")
Call = Callable[[AsyncPowerDriver], Awaitable[T]]


class AsyncOperation(Operation):
    """:class:`~bmc.operation.Operation` whose calls and pauses are awaited."""

    async def _session(self) -> AsyncPowerDriver:
        drv = cast(AsyncPowerDriver, self.driver())
        if drv.needs_session():
            await drv.open_session_async()
        return drv

    def close(self) -> None:
        if self._driver is not None:  # parked or closed next: off the loop's selector first
            cast(AsyncPowerDriver, self._driver).detach_loop()
        super().close()

    def _discard(self, drv: PowerDriver) -> None:
        cast(AsyncPowerDriver, drv).detach_loop()
        if cast(AsyncPowerDriver, drv).needs_session():  # no session (a failed handshake): no I/O
            close_quietly(drv)
            return
        # Closing politely is a round trip that may wait for a BMC gone away: not on the loop.
        self.ctl.executor().submit(close_quietly, drv)

    async def once_async(self, fn: Call[T]) -> T:
        """One BMC call, paced; unknown exceptions become :class:`BmcProtocolError`."""
        wait = self.pace_wait()
        if wait > 0:
            await asyncio.sleep(wait)
        with self.guarded():
            try:
                return await fn(await self._session())
            except BmcError as exc:
                if not self.reauthenticate(exc):
                    raise
                return await fn(await self._session())
            finally:
                self._reused = False

    async def call_async(self, fn: Call[T]) -> T:
        """``fn`` with retries for transient errors, within the deadline."""
        failures = 0
        while True:
            self.attempts += 1
            try:
                return await self.once_async(fn)
            except BmcFatalError:
                raise
            except BmcTransientError as exc:
                failures += 1
                await asyncio.sleep(self.retry_delay(exc, failures))

    async def wait_for_async(
        self, action: PowerAction, settle: float, immediate: bool
    ) -> tuple[PowerState | None, bool]:
        """Read the power state back until it is ``action``'s target or the settle time (within
        the deadline) passes, as :meth:`Operation.wait_for` does."""
        policy = self.ctl.policy
        until = min(self.clock.monotonic() + settle, self.deadline)
        last: PowerState | None = None
        gap = policy.poll_interval / 2  # immediate read-back, then 1/2, 1, 1, ... apart
        if not immediate:
            await asyncio.sleep(min(gap, max(until - self.clock.monotonic(), 0.0)))
            gap = min(gap * 2, policy.poll_interval)
        while True:
            self.polls += 1
            try:
                last = await self.once_async(_read)
            except BmcFatalError:
                raise
            except BmcTransientError as exc:
                self.read_back_failed(exc)
                last = None
            if last == action.target:
                return last, True
            now = self.clock.monotonic()
            if now >= until:
                return last, False
            await asyncio.sleep(min(gap, until - now))
            gap = min(gap * 2, policy.poll_interval)


def _read(d: AsyncPowerDriver) -> Awaitable[PowerState]:
    return d.get_power_state_async()


async def read_power(op: AsyncOperation) -> BmcResult:
    """Read the power state (:func:`bmc.sequences.read_power`)."""
    state = await op.call_async(_read)
    return BmcResult(op.endpoint.key, op.name, state, op.attempts, 0.0)


async def power(op: AsyncOperation, action: PowerAction, settle: float) -> BmcResult:
    """Carry out ``action`` and wait until the power state reads back as its target
    (:func:`bmc.sequences.power`)."""
    before = await op.call_async(_read)
    if action in IDEMPOTENT and before == action.target:
        return BmcResult(op.endpoint.key, op.name, before, op.attempts, 0.0)
    already = await _command(op, action, before)
    if already is not None:
        return BmcResult(op.endpoint.key, op.name, already, op.attempts, 0.0)
    restart = action in (PowerAction.cycle, PowerAction.reset) and before != PowerState.off
    state, settled = await op.wait_for_async(action, settle, immediate=not restart)
    return verified(op, action, settle, state, settled)


async def _command(
    op: AsyncOperation, action: PowerAction, before: PowerState
) -> PowerState | None:
    """Send the command; ``None``, or the target state if a refused on/off was already there."""
    name, args = command(action, before)
    try:
        await op.call_async(lambda d: getattr(d, f"{name}_async")(*args))
    except BmcFatalError as exc:
        if action not in IDEMPOTENT:
            raise
        try:  # some BMCs refuse "on" when on (IPMI cc D5h): check
            now = await op.once_async(_read)
        except BmcError:
            raise exc from None
        if now != action.target:
            raise
        LOG.debug(
            "bmc already in target bmc=%s action=%s error=%s", op.endpoint.key, action.value, exc
        )
        return now
    return None
