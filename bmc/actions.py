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
``async`` methods run them in a bounded thread pool so the event loop never blocks, except the
power reads and power actions of IPMI endpoints, which run on the event loop itself
(:mod:`bmc.aoperation`: no thread per operation, no thread wake-up per message).

This module holds :class:`BmcController` (the entry point: per-BMC locks, the global limit,
the thread pool, logging) and the driver factory. The rest of the policy lives beside it:
:mod:`bmc.pacing` (clock, knobs, per-BMC slots and kept sessions), :mod:`bmc.operation`
(one operation: paced calls, re-authentication, retries, read-back polling, the result) and
:mod:`bmc.sequences` (what each operation reads, sends and verifies). Their public names are
importable from here too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from bmc import aoperation, sequences
from bmc.aoperation import AsyncOperation
from bmc.driver import DriverFactory, DriverTimeouts, PowerDriver
from bmc.errors import BmcError
from bmc.netpolicy import NetPolicy, _is_ip, check_address
from bmc.operation import BmcResult as BmcResult
from bmc.operation import Operation
from bmc.pacing import Clock as Clock
from bmc.pacing import PowerPolicy as PowerPolicy
from bmc.pacing import SessionSlots, Slot
from bmc.pacing import SystemClock as SystemClock
from bmc.types import BmcEndpoint, BootDevice, DriverKind, PowerAction, PowerState

LOG = logging.getLogger(__name__)


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

    # Its IPMI drivers are AsyncPowerDriver: the controller runs their power operations on the
    # event loop (bmc.aoperation).
    factory.ipmi_on_loop = True  # type: ignore[attr-defined]
    return factory


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
        self._sessions = SessionSlots(self.policy, self.clock)
        self._global = threading.BoundedSemaphore(self.policy.max_concurrency)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._async_locks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}
        self.observers: list[Callable[[BmcEndpoint, str, BmcResult], None]] = []
        """Called with every finished operation (endpoint, operation name, result), on the
        thread that ran it: the server counts them for /metrics. Must be quick and not raise."""

    # -- plumbing -----------------------------------------------------------------------

    def _start_reaper(self) -> None:
        self._sessions.start_reaper()

    def reap_idle_sessions(self, idle: float | None = None) -> int:
        """Close sessions idle for ``idle`` seconds (default ``session_idle``); busy BMCs are
        skipped. Returns how many were closed."""
        return self._sessions.reap_idle(idle)

    def open_sessions(self) -> int:
        """Sessions parked between operations."""
        return self._sessions.open_sessions()

    def park(self, slot: Slot, drv: PowerDriver, endpoint: BmcEndpoint) -> bool:
        """Keep ``drv`` in ``slot`` for the next operation, unless reuse is off or
        ``max_sessions`` are kept already (then the caller closes it)."""
        return self._sessions.park(slot, drv, endpoint)

    def _run(
        self,
        endpoint: BmcEndpoint,
        name: str,
        budget: float,
        body: Callable[[Operation], BmcResult],
    ) -> BmcResult:
        start = self.clock.monotonic()
        slot = self._sessions.slot(endpoint.key)
        with slot.lock, self._global:
            op = Operation(self, endpoint, slot, self.clock.monotonic() + budget, name)
            try:
                self._check(endpoint)
                result = body(op)
            except BmcError as exc:
                result = _failed(op, exc)
            finally:
                op.close()
        return self._finish(endpoint, name, start, result)

    async def _run_on_loop(
        self,
        endpoint: BmcEndpoint,
        name: str,
        budget: float,
        body: Callable[[AsyncOperation], Awaitable[BmcResult]],
        in_thread: Callable[[], BmcResult],
    ) -> BmcResult:
        """:meth:`_run` on the event loop. The BMC's slot and a place under ``max_concurrency``
        are taken without waiting; when a blocking caller holds either, the operation waits for
        them on a thread (``in_thread``), as every operation did before."""
        async with self._async_lock(endpoint.key):
            slot = self._sessions.slot(endpoint.key)
            if not self._global.acquire(blocking=False):
                return await self._on_thread(in_thread)
            if not slot.lock.acquire(blocking=False):
                self._global.release()
                return await self._on_thread(in_thread)
            start = self.clock.monotonic()
            try:
                op = AsyncOperation(self, endpoint, slot, start + budget, name)
                try:
                    self._check(endpoint)
                    result = await body(op)
                except BmcError as exc:
                    result = _failed(op, exc)
                finally:
                    op.close()
            finally:
                slot.lock.release()
                self._global.release()
        return self._finish(endpoint, name, start, result)

    def _check(self, endpoint: BmcEndpoint) -> None:
        if self.netpolicy is not None:
            check_address(endpoint.address, self.netpolicy, port=endpoint.port)

    def _on_loop(self, endpoint: BmcEndpoint) -> bool:
        """Whether ``endpoint``'s power operations run on the event loop: IPMI drivers of the
        default factory, an IPv4 literal (nothing to resolve), the real clock."""
        return (
            endpoint.driver == DriverKind.ipmi
            and getattr(self.factory, "ipmi_on_loop", False)
            and isinstance(self.clock, SystemClock)
            and _is_ip(endpoint.address)
            and ":" not in endpoint.address
        )

    def _finish(
        self, endpoint: BmcEndpoint, name: str, start: float, result: BmcResult
    ) -> BmcResult:
        result = replace(result, elapsed=self.clock.monotonic() - start)
        self._log(endpoint, name, result)
        for observe in self.observers:
            observe(endpoint, name, result)
        return result

    def _log(self, endpoint: BmcEndpoint, name: str, result: BmcResult) -> None:
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
            result.elapsed,
            result.message,
        )
        if result.error is not None:  # the library's own words, for whoever debugs the driver
            LOG.debug("bmc op=%s bmc=%s detail=%s", name, endpoint.key, result.error)

    # -- sync API -----------------------------------------------------------------------

    def get_power_state_sync(
        self, endpoint: BmcEndpoint, *, deadline: float | None = None
    ) -> BmcResult:
        """Read the power state; ``unknown`` (with ``error``) if the BMC cannot say."""
        return self._run(
            endpoint,
            "get-power-state",
            deadline or self.policy.read_deadline,
            sequences.read_power,
        )

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
        settle = settle_timeout if settle_timeout is not None else self.policy.settle_timeout
        return self._run(
            endpoint,
            f"power-{action.value}",
            deadline or self.policy.deadline,
            functools.partial(sequences.power, action=action, settle=settle),
        )

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
        body = functools.partial(
            sequences.set_boot,
            device=device,
            persistent=persistent,
            uefi=uefi,
            settle=min(self.policy.settle_timeout, 10.0),
        )
        return self._run(endpoint, f"boot-{device.value}", deadline or self.policy.deadline, body)

    # -- async API ----------------------------------------------------------------------

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads of blocking operations (and of the blocking steps of the others)."""
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
            return await self._on_thread(functools.partial(fn, *args, **kwargs))

    async def _on_thread(self, fn: Callable[[], BmcResult]) -> BmcResult:
        return await asyncio.get_running_loop().run_in_executor(self.executor(), fn)

    async def get_power_state(
        self, endpoint: BmcEndpoint, *, deadline: float | None = None
    ) -> BmcResult:
        if self._on_loop(endpoint):
            return await self._run_on_loop(
                endpoint,
                "get-power-state",
                deadline or self.policy.read_deadline,
                aoperation.read_power,
                functools.partial(self.get_power_state_sync, endpoint, deadline=deadline),
            )
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
        in_thread = functools.partial(
            self.power_sync, endpoint, action, deadline=deadline, settle_timeout=settle_timeout
        )
        if not self._on_loop(endpoint):
            return await self._in_thread(endpoint.key, in_thread)
        action = PowerAction(action)
        settle = settle_timeout if settle_timeout is not None else self.policy.settle_timeout
        return await self._run_on_loop(
            endpoint,
            f"power-{action.value}",
            deadline or self.policy.deadline,
            functools.partial(aoperation.power, action=action, settle=settle),
            in_thread,
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
        self._sessions.stop_reaper()
        self.reap_idle_sessions(idle=0.0)


def _failed(op: Operation, exc: BmcError) -> BmcResult:
    return BmcResult(
        op.endpoint.key, op.name, PowerState.unknown, op.attempts, 0.0, polls=op.polls, error=exc
    )
