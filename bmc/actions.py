"""The power policy, in one place: retries, read-back, deadlines, pacing, limits.

A BMC is a slow, fallible embedded computer. Asking it to power a host on is three
separate facts: the request arrived, the BMC accepted it, and *later* the host's power
changed (sushy-emulator applies a change 1 to 11 s after accepting it; real BMCs take
seconds, a graceful shutdown takes as long as the OS wants). Drivers
(:mod:`bmc.driver`) only make single calls; :class:`BmcController` turns calls into
operations with these rules:

- **Read first, act only if needed.** ``on``/``off``/``soft-off`` on a host already in
  the target state succeed without a command (idempotent reconcile loops). ``cycle``
  and ``reset`` of a host that is off power it on (Redfish DSP0266 and IPMI 2.0 section
  28.3 leave reset-while-off undefined; ironic does the same).
- **Retry transient errors only** (:class:`~bmc.errors.BmcTransientError`), with
  exponential backoff and jitter, at most ``max_attempts`` tries, never past the
  operation's deadline. Fatal errors (auth, config, unsupported) return at once. A
  fatal answer to ``on``/``off`` is re-checked by a read: "already on" is success.
- **Verify every write by reading back** until the target state is seen or the settle
  timeout (bounded by the deadline) passes. A cycle or reset is verified by the host
  ending on; a boot override by the device reading back.
- **Unreachable means unknown.** A read that fails reports ``PowerState.unknown``,
  never the last known state.
- **One operation at a time per BMC** (``address:port``), with at least
  ``min_interval`` seconds between two calls to the same BMC, and at most
  ``max_concurrency`` operations in flight overall.
- **One session per BMC, reused.** A driver (an authenticated IPMI session, a Redfish
  connection) outlives its operation and serves the next one on the same BMC; sessions idle
  for ``session_idle`` seconds are closed by a reaper thread, and at most ``max_sessions``
  are kept (each holds a socket). If the first call on a reused
  session fails (BMC restarted, session expired), the session is dropped and the call is
  made again at once on a fresh one (re-authentication), before the retry policy counts
  it as an attempt.

Operations never raise :class:`~bmc.errors.BmcError`: they return a :class:`BmcResult`
whose ``error`` says what went wrong. Time comes from an injected :class:`Clock`, so
the policy is unit-tested without sleeping. The sync methods (``*_sync``) block; the
``async`` methods run them in a bounded thread pool so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from bmc.driver import DriverFactory, DriverTimeouts, PowerDriver
from bmc.errors import (
    BmcDeadlineExceeded,
    BmcError,
    BmcFatalError,
    BmcProtocolError,
    BmcTransientError,
    BmcVerifyTimeout,
)
from bmc.explain import describe
from bmc.netpolicy import NetPolicy, check_address
from bmc.types import BmcEndpoint, BootDevice, BootSetting, DriverKind, PowerAction, PowerState

LOG = logging.getLogger(__name__)
T = TypeVar("T")


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


@dataclass
class _Slot:
    """Per-BMC serialization and pacing, and the session kept between operations."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    last_call: float | None = None
    driver: PowerDriver | None = None
    """Parked by the last operation; only for ``endpoint`` (same credentials and settings)."""
    endpoint: BmcEndpoint | None = None
    idle_since: float = 0.0

    def take(self, endpoint: BmcEndpoint) -> PowerDriver | None:
        """The parked driver if it was built for ``endpoint``; a mismatched one is closed."""
        drv, self.driver = self.driver, None
        if drv is not None and self.endpoint != endpoint:
            _close_quietly(drv)
            drv = None
        return drv


def _close_quietly(drv: PowerDriver) -> None:
    try:
        drv.close()
    except Exception:  # noqa: S110 - drivers must not raise on close; belt and braces
        pass


def default_driver_factory(
    timeouts: DriverTimeouts | None = None, probe_timeout: float = 1.0
) -> DriverFactory:
    """Builds Redfish/IPMI drivers; ``auto`` endpoints are probed once per key."""
    resolved: dict[str, BmcEndpoint] = {}
    lock = threading.Lock()

    def factory(endpoint: BmcEndpoint) -> PowerDriver:
        if endpoint.driver == DriverKind.auto:
            with lock:
                cached = resolved.get(endpoint.key)
            if cached is None or cached.password != endpoint.password:
                from bmc.probe import resolve_auto

                cached = resolve_auto(endpoint, probe_timeout)
                with lock:
                    resolved[endpoint.key] = cached
            endpoint = cached
        if endpoint.driver == DriverKind.redfish:
            from bmc.redfish import RedfishDriver

            return RedfishDriver(endpoint, timeouts)
        from bmc.ipmi import IpmiDriver

        return IpmiDriver(endpoint, timeouts)

    return factory


class _Operation:
    """One operation's bookkeeping: driver, attempts, deadline."""

    def __init__(
        self, ctl: BmcController, endpoint: BmcEndpoint, slot: _Slot, deadline: float, name: str
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
            parked = self.slot.take(self.endpoint) if self.ctl.policy.session_idle > 0 else None
            self._reused = parked is not None
            self._driver = parked if parked is not None else self.ctl.factory(self.endpoint)
        return self._driver

    def drop_driver(self) -> None:
        drv, self._driver = self._driver, None
        self._reused = False
        if drv is not None:
            _close_quietly(drv)

    def close(self) -> None:
        """End of the operation: park the session for the next one, or close it."""
        drv, self._driver = self._driver, None
        if drv is None:
            return
        if self.ctl.park(self.slot, drv, self.endpoint):
            self.ctl._start_reaper()
        else:
            _close_quietly(drv)

    def _pace(self) -> None:
        if self.slot.last_call is not None:
            wait = self.slot.last_call + self.ctl.policy.min_interval - self.clock.monotonic()
            if wait > 0:
                self.clock.sleep(wait)

    def once(self, fn: Callable[[PowerDriver], T]) -> T:
        """One BMC call, paced; unknown exceptions become :class:`BmcProtocolError`."""
        self._pace()
        try:
            driver = self.driver()
            try:
                return fn(driver)
            except BmcError as exc:
                if not self._reused:
                    raise
                # A session kept from an earlier operation may be dead (BMC restarted, session
                # expired): authenticate again and repeat the call once, at once.
                LOG.debug(
                    "bmc reused session failed bmc=%s error=%s; re-authenticating",
                    self.endpoint.key,
                    type(exc).__name__,
                )
                self.drop_driver()
                self.reauths += 1
                return fn(self.driver())
            finally:
                self._reused = False
        except BmcError:
            raise
        except Exception as exc:
            raise BmcProtocolError(
                bmc=self.endpoint.key, detail=f"unexpected {type(exc).__name__}"
            ) from None
        finally:
            self.slot.last_call = self.clock.monotonic()

    def call(self, fn: Callable[[PowerDriver], T]) -> T:
        """``fn`` with retries for transient errors, within the deadline."""
        policy = self.ctl.policy
        failures = 0
        while True:
            self.attempts += 1
            try:
                return self.once(fn)
            except BmcFatalError:
                raise
            except BmcTransientError as exc:
                failures += 1
                self.drop_driver()
                LOG.debug(
                    "bmc transient bmc=%s op=%s attempt=%d error=%s",
                    self.endpoint.key,
                    self.name,
                    self.attempts,
                    exc,
                )
                if failures >= policy.max_attempts:
                    raise
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
                self.clock.sleep(delay)

    def wait_for(
        self, read: Callable[[PowerDriver], T], done: Callable[[T], bool], settle: float
    ) -> tuple[T | None, bool]:
        """Poll ``read`` until ``done`` or the settle time (within the deadline) passes."""
        policy = self.ctl.policy
        until = min(self.clock.monotonic() + settle, self.deadline)
        last: T | None = None
        gap = policy.poll_interval / 2  # immediate read-back, then 1/2, 1, 1, ... apart
        while True:
            self.polls += 1
            try:
                last = self.once(read)
            except BmcFatalError:
                raise
            except BmcTransientError as exc:
                self.drop_driver()
                LOG.debug("bmc verify read failed bmc=%s error=%s", self.endpoint.key, exc)
                last = None
            if last is not None and done(last):
                return last, True
            now = self.clock.monotonic()
            if now >= until:
                return last, False
            self.clock.sleep(min(gap, until - now))
            gap = min(gap * 2, policy.poll_interval)


class BmcController:
    """Runs power operations on BMCs with the policy above. Thread-safe."""

    def __init__(
        self,
        factory: DriverFactory | None = None,
        policy: PowerPolicy | None = None,
        clock: Clock | None = None,
        rng: Callable[[], float] | None = None,
        netpolicy: NetPolicy | None = None,
    ) -> None:
        self.policy = policy or PowerPolicy()
        self.factory = factory or default_driver_factory()
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.random
        self.netpolicy = netpolicy
        self._slots: dict[str, _Slot] = {}
        self._slots_lock = threading.Lock()
        self._global = threading.BoundedSemaphore(self.policy.max_concurrency)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._async_locks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    # -- plumbing -----------------------------------------------------------------------

    def _slot(self, key: str) -> _Slot:
        with self._slots_lock:
            return self._slots.setdefault(key, _Slot())

    def _start_reaper(self) -> None:
        with self._slots_lock:
            if self._reaper is not None or self._stop.is_set():
                return
            self._reaper = threading.Thread(
                target=self._reap_forever, name="bmc-session-reaper", daemon=True
            )
            self._reaper.start()

    def _reap_forever(self) -> None:
        while not self._stop.wait(max(self.policy.session_idle / 4, 0.05)):
            self.reap_idle_sessions()

    def reap_idle_sessions(self, idle: float | None = None) -> int:
        """Close sessions idle for ``idle`` seconds (default ``session_idle``); busy BMCs are
        skipped. Returns how many were closed."""
        idle = self.policy.session_idle if idle is None else idle
        now = self.clock.monotonic()
        with self._slots_lock:
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
                list(pool.map(_close_quietly, expired))
        elif expired:
            _close_quietly(expired[0])
        return len(expired)

    def open_sessions(self) -> int:
        """Sessions parked between operations."""
        with self._slots_lock:
            return self._parked()

    def _parked(self) -> int:
        return sum(1 for s in self._slots.values() if s.driver is not None)

    def park(self, slot: _Slot, drv: PowerDriver, endpoint: BmcEndpoint) -> bool:
        """Keep ``drv`` in ``slot`` for the next operation, unless reuse is off or
        ``max_sessions`` are kept already (then the caller closes it)."""
        if self.policy.session_idle <= 0:
            return False
        with self._slots_lock:  # parks are serialized, so the cap is exact
            if self._parked() >= self.policy.max_sessions:
                return False
            slot.driver, slot.endpoint = drv, endpoint
            slot.idle_since = self.clock.monotonic()
        return True

    def _run(
        self,
        endpoint: BmcEndpoint,
        name: str,
        budget: float,
        body: Callable[[_Operation], BmcResult],
    ) -> BmcResult:
        start = self.clock.monotonic()
        slot = self._slot(endpoint.key)
        with slot.lock, self._global:
            op = _Operation(self, endpoint, slot, self.clock.monotonic() + budget, name)
            try:
                if self.netpolicy is not None:
                    check_address(endpoint.address, self.netpolicy, port=endpoint.port)
                result = body(op)
            except BmcError as exc:
                result = BmcResult(
                    endpoint.key,
                    name,
                    PowerState.unknown,
                    op.attempts,
                    0.0,
                    polls=op.polls,
                    error=exc,
                )
            finally:
                op.close()
        elapsed = self.clock.monotonic() - start
        result = _with_elapsed(result, elapsed)
        level = logging.INFO if result.ok else logging.WARNING
        LOG.log(
            level,
            "bmc op=%s bmc=%s driver=%s state=%s changed=%s attempts=%d polls=%d "
            "elapsed=%.2f error=%s",
            name,
            endpoint.key,
            endpoint.driver.value,
            result.state.value,
            result.changed,
            result.attempts,
            result.polls,
            elapsed,
            result.message,
        )
        if result.error is not None:  # the library's own words, for whoever debugs the driver
            LOG.debug("bmc op=%s bmc=%s detail=%s", name, endpoint.key, result.error)
        return result

    # -- sync API -----------------------------------------------------------------------

    def get_power_state_sync(
        self, endpoint: BmcEndpoint, *, deadline: float | None = None
    ) -> BmcResult:
        """Read the power state; ``unknown`` (with ``error``) if the BMC cannot say."""

        def body(op: _Operation) -> BmcResult:
            state = op.call(lambda d: d.get_power_state())
            return BmcResult(endpoint.key, op.name, state, op.attempts, 0.0)

        return self._run(endpoint, "get-power-state", deadline or self.policy.read_deadline, body)

    def power_sync(
        self,
        endpoint: BmcEndpoint,
        action: PowerAction,
        *,
        deadline: float | None = None,
        settle_timeout: float | None = None,
    ) -> BmcResult:
        """Carry out ``action`` and wait until the power state reads back as its target."""
        action = PowerAction(action)
        target = action.target
        settle = settle_timeout if settle_timeout is not None else self.policy.settle_timeout

        def body(op: _Operation) -> BmcResult:
            before = op.call(lambda d: d.get_power_state())
            if (
                action in (PowerAction.on, PowerAction.off, PowerAction.soft_off)
                and before == target
            ):
                return BmcResult(endpoint.key, op.name, before, op.attempts, 0.0)
            command = _command_for(action, before)
            try:
                op.call(command)
            except BmcFatalError as exc:
                if action not in (PowerAction.on, PowerAction.off, PowerAction.soft_off):
                    raise
                # Some BMCs refuse "on" when on (IPMI cc D5h, Redfish 400/409): check.
                try:
                    now = op.once(lambda d: d.get_power_state())
                except BmcError:
                    raise exc from None
                if now != target:
                    raise
                LOG.debug(
                    "bmc already in target bmc=%s action=%s error=%s",
                    endpoint.key,
                    action.value,
                    exc,
                )
                return BmcResult(endpoint.key, op.name, now, op.attempts, 0.0)
            state, settled = op.wait_for(
                lambda d: d.get_power_state(), lambda s: s == target, settle
            )
            final = state if state is not None else PowerState.unknown
            error = (
                None
                if settled
                else BmcVerifyTimeout(
                    bmc=endpoint.key,
                    action=action.value,
                    expected=target.value,
                    seconds=settle,
                    observed=final.value,
                )
            )
            return BmcResult(
                endpoint.key,
                op.name,
                final,
                op.attempts,
                0.0,
                changed=True,
                polls=op.polls,
                error=error,
            )

        return self._run(endpoint, f"power-{action.value}", deadline or self.policy.deadline, body)

    def set_boot_device_sync(
        self,
        endpoint: BmcEndpoint,
        device: BootDevice,
        *,
        persistent: bool = False,
        uefi: bool = True,
        deadline: float | None = None,
    ) -> BmcResult:
        """Set the boot override and read it back (the device must match)."""
        device = BootDevice(device)

        def body(op: _Operation) -> BmcResult:
            op.call(lambda d: d.set_boot_device(device, persistent, uefi))
            boot, settled = op.wait_for(
                lambda d: d.get_boot_device(),
                lambda b: b is not None and b.device == device,
                min(self.policy.settle_timeout, 10.0),
            )
            error = (
                None
                if settled
                else BmcVerifyTimeout(
                    bmc=endpoint.key,
                    action=f"boot {device.value}",
                    expected=device.value,
                    seconds=min(self.policy.settle_timeout, 10.0),
                    observed=str(boot.device if boot else None),
                )
            )
            if boot is not None and (
                boot.persistent not in (None, persistent) or boot.uefi not in (None, uefi)
            ):
                LOG.debug(
                    "bmc boot flags differ on read-back bmc=%s wanted=%s/%s read=%s/%s",
                    endpoint.key,
                    persistent,
                    uefi,
                    boot.persistent,
                    boot.uefi,
                )
            return BmcResult(
                endpoint.key,
                op.name,
                PowerState.unknown,
                op.attempts,
                0.0,
                changed=True,
                polls=op.polls,
                boot=boot,
                error=error,
            )

        return self._run(endpoint, f"boot-{device.value}", deadline or self.policy.deadline, body)

    # -- async API ----------------------------------------------------------------------

    def _executor_(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.policy.max_concurrency, thread_name_prefix="bmc"
            )
        return self._executor

    def _async_lock(self, key: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        entry = self._async_locks.get(key)
        if entry is None or entry[0] is not loop:
            entry = (loop, asyncio.Lock())
            self._async_locks[key] = entry
        return entry[1]

    async def _in_thread(
        self, key: str, fn: Callable[..., BmcResult], *args: Any, **kwargs: Any
    ) -> BmcResult:
        # The asyncio lock queues same-BMC callers on the loop, not in pool threads,
        # so one busy BMC cannot occupy the whole pool.
        async with self._async_lock(key):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor_(), functools.partial(fn, *args, **kwargs)
            )

    async def get_power_state(
        self, endpoint: BmcEndpoint, *, deadline: float | None = None
    ) -> BmcResult:
        return await self._in_thread(
            endpoint.key, self.get_power_state_sync, endpoint, deadline=deadline
        )

    async def power(
        self,
        endpoint: BmcEndpoint,
        action: PowerAction,
        *,
        deadline: float | None = None,
        settle_timeout: float | None = None,
    ) -> BmcResult:
        return await self._in_thread(
            endpoint.key,
            self.power_sync,
            endpoint,
            action,
            deadline=deadline,
            settle_timeout=settle_timeout,
        )

    async def set_boot_device(
        self,
        endpoint: BmcEndpoint,
        device: BootDevice,
        *,
        persistent: bool = False,
        uefi: bool = True,
        deadline: float | None = None,
    ) -> BmcResult:
        return await self._in_thread(
            endpoint.key,
            self.set_boot_device_sync,
            endpoint,
            device,
            persistent=persistent,
            uefi=uefi,
            deadline=deadline,
        )

    def close(self) -> None:
        """Stop the thread pool (waits for running operations), then close every session."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(5)
        self.reap_idle_sessions(idle=0.0)


def _command_for(action: PowerAction, before: PowerState) -> Callable[[PowerDriver], None]:
    if action == PowerAction.on:
        return lambda d: d.power_on()
    if action == PowerAction.off:
        return lambda d: d.power_off(graceful=False)
    if action == PowerAction.soft_off:
        return lambda d: d.power_off(graceful=True)
    if before == PowerState.off:  # cycle/reset of a host that is off: power it on
        return lambda d: d.power_on()
    if action == PowerAction.cycle:
        return lambda d: d.power_cycle()
    return lambda d: d.reset()


def _with_elapsed(result: BmcResult, elapsed: float) -> BmcResult:
    from dataclasses import replace

    return replace(result, elapsed=elapsed)
