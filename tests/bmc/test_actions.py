"""The policy of bmc/actions.py with fake drivers and an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from bmc import (
    BmcAuthError,
    BmcController,
    BmcDeadlineExceeded,
    BmcEndpoint,
    BmcTimeoutError,
    BmcTransientError,
    BmcUnsupportedError,
    BmcVerifyTimeout,
    BootDevice,
    BootSetting,
    DriverKind,
    PowerAction,
    PowerPolicy,
    PowerState,
)
from tests.support.clock import FakeClock


@dataclass
class FakeBmc:
    """A BMC's behaviour over (fake) time, shared by every driver built for it."""

    clock: FakeClock
    state: PowerState = PowerState.off
    settle: float = 0.0
    pending: tuple[PowerState, float] | None = None
    failures: list[Exception] = field(default_factory=list)  # raised by the next calls
    calls: list[str] = field(default_factory=list)
    refuse_same_state: bool = False
    boot: BootSetting = BootSetting(None)

    def _tick(self) -> None:
        if self.pending and self.clock.now >= self.pending[1]:
            self.state, self.pending = self.pending[0], None

    def call(self, name: str) -> None:
        self.calls.append(name)
        self.clock.now += 0.01  # each call takes a little time
        if self.failures:
            raise self.failures.pop(0)

    def set(self, state: PowerState) -> None:
        self._tick()
        if self.refuse_same_state and self.state == state:
            raise BmcUnsupportedError(bmc="fake", operation="power", detail="cc=D5h")
        self.pending = (state, self.clock.now + self.settle)
        self._tick()


class FakeDriver:
    def __init__(self, bmc: FakeBmc) -> None:
        self.bmc = bmc

    def get_power_state(self) -> PowerState:
        self.bmc.call("get")
        self.bmc._tick()
        return self.bmc.state

    def power_on(self) -> None:
        self.bmc.call("on")
        self.bmc.set(PowerState.on)

    def power_off(self, graceful: bool) -> None:
        self.bmc.call("soft-off" if graceful else "off")
        self.bmc.set(PowerState.off)

    def power_cycle(self) -> None:
        self.bmc.call("cycle")
        self.bmc.state = PowerState.off
        self.bmc.set(PowerState.on)

    def reset(self) -> None:
        self.bmc.call("reset")

    def set_boot_device(self, device: BootDevice, persistent: bool, uefi: bool) -> None:
        self.bmc.call("set-boot")
        self.bmc.boot = BootSetting(device, persistent, uefi)

    def get_boot_device(self) -> BootSetting:
        self.bmc.call("get-boot")
        return self.bmc.boot

    def close(self) -> None:
        pass


EP = BmcEndpoint(DriverKind.ipmi, "10.0.0.5", 623, "admin", "pw")
POLICY = PowerPolicy(
    max_attempts=4,
    backoff_initial=1.0,
    backoff_factor=2.0,
    backoff_max=5.0,
    jitter=0.0,
    deadline=100.0,
    read_deadline=50.0,
    settle_timeout=10.0,
    poll_interval=1.0,
    min_interval=0.0,
)


def make(
    policy: PowerPolicy = POLICY, **bmc_kw: object
) -> tuple[BmcController, FakeBmc, FakeClock, list[int]]:
    clock = FakeClock()
    bmc = FakeBmc(clock, **bmc_kw)  # type: ignore[arg-type]
    built: list[int] = []

    def factory(ep: BmcEndpoint) -> FakeDriver:
        built.append(1)
        return FakeDriver(bmc)

    return BmcController(factory, policy, clock, rng=lambda: 0.5), bmc, clock, built


def timeout() -> BmcTimeoutError:
    return BmcTimeoutError(bmc="fake", seconds=1.0, detail="no answer")


# -- retries ---------------------------------------------------------------------------


def test_transient_errors_are_retried_with_exponential_backoff() -> None:
    ctl, bmc, clock, built = make()
    bmc.failures = [timeout(), timeout()]
    result = ctl.get_power_state_sync(EP)
    assert result.ok and result.state == PowerState.off
    assert result.attempts == 3
    assert clock.sleeps == [1.0, 2.0]
    assert len(built) == 3  # a fresh driver (session) after each transient failure


def test_backoff_is_capped_and_jittered() -> None:
    p = PowerPolicy(backoff_initial=1.0, backoff_factor=2.0, backoff_max=5.0, jitter=0.25)
    assert [p.backoff(n, lambda: 0.5) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert p.backoff(1, lambda: 0.0) == 0.75
    assert p.backoff(1, lambda: 1.0) == 1.25


def test_fatal_errors_are_not_retried() -> None:
    ctl, bmc, clock, built = make()
    bmc.failures = [BmcAuthError(bmc="fake", user="admin", detail="bad")]
    result = ctl.power_sync(EP, PowerAction.on)
    assert isinstance(result.error, BmcAuthError)
    assert result.attempts == 1 and clock.sleeps == [] and len(built) == 1
    assert result.state == PowerState.unknown
    assert bmc.calls == ["get"]


def test_attempts_are_bounded() -> None:
    ctl, bmc, clock, _ = make()
    bmc.failures = [timeout() for _ in range(10)]
    result = ctl.get_power_state_sync(EP)
    assert isinstance(result.error, BmcTimeoutError)
    assert result.attempts == POLICY.max_attempts
    assert result.state == PowerState.unknown
    assert clock.sleeps == [1.0, 2.0, 4.0]


def test_deadline_stops_retrying_before_a_backoff_would_pass_it() -> None:
    policy = PowerPolicy(**{**POLICY.__dict__, "max_attempts": 10, "read_deadline": 4.0})
    ctl, bmc, clock, _ = make(policy)
    bmc.failures = [timeout() for _ in range(10)]
    result = ctl.get_power_state_sync(EP)
    assert isinstance(result.error, BmcDeadlineExceeded)
    assert isinstance(result.error, BmcTransientError)
    # t=0 fail, sleep 1, t=1 fail, sleep 2, t=3 fail: sleeping 4 more would pass 4 s
    assert result.attempts == 3 and clock.sleeps == [1.0, 2.0]
    assert result.elapsed < 4.0


def test_transient_errors_during_the_command_are_retried() -> None:
    ctl, bmc, clock, _ = make()
    bmc.failures = []
    # the pre-read succeeds, the command fails twice
    orig = bmc.call

    def call(name: str) -> None:
        if name == "on" and bmc.calls.count("on") < 2:
            bmc.calls.append(name)
            raise timeout()
        orig(name)

    bmc.call = call  # type: ignore[method-assign]
    result = ctl.power_sync(EP, PowerAction.on)
    assert result.ok and result.state == PowerState.on
    assert bmc.calls.count("on") == 3
    assert result.attempts == 4


# -- verification ----------------------------------------------------------------------


@pytest.mark.parametrize("action", [PowerAction.cycle, PowerAction.reset])
def test_restart_of_a_running_host_is_not_verified_by_an_immediate_read(
    action: PowerAction,
) -> None:
    """Until the BMC acts, a host being cycled still reads on: the first read-back waits half a
    poll interval (an off host is powered on instead, and read back at once)."""
    ctl, bmc, clock, _ = make(state=PowerState.on)
    result = ctl.power_sync(EP, action)
    assert result.ok and result.polls == 1
    assert bmc.calls == ["get", action.value, "get"]
    assert clock.sleeps == [0.5]
    ctl, bmc, clock, _ = make(state=PowerState.off)
    assert ctl.power_sync(EP, action).ok
    assert bmc.calls == ["get", "on", "get"] and clock.sleeps == []


def test_write_is_verified_by_polling_until_settled() -> None:
    ctl, bmc, clock, _ = make(settle=3.5)
    result = ctl.power_sync(EP, PowerAction.on)
    assert result.ok and result.state == PowerState.on and result.changed
    # read back at once, then half a poll_interval (1 s), then every poll_interval:
    # t=0, .5, 1.5, 2.5 (off), ~3.55 (on; it settles 3.5 s after the command at ~0.02)
    assert result.polls == 5
    assert bmc.calls == ["get", "on"] + ["get"] * 5
    assert clock.sleeps == [0.5, 1.0, 1.0, 1.0]


def test_verify_timeout_reports_last_observed_state() -> None:
    ctl, bmc, clock, _ = make(settle=1000.0)
    result = ctl.power_sync(EP, PowerAction.on, settle_timeout=5.0)
    assert isinstance(result.error, BmcVerifyTimeout)
    assert result.state == PowerState.off  # what was read, not what was wished
    assert 5.0 <= result.elapsed < 6.0
    assert "on" not in [c for c in bmc.calls[2:]]  # the command is not re-sent


def test_verify_survives_transient_read_failures() -> None:
    ctl, bmc, clock, _ = make(settle=1.5)
    orig = bmc.call
    failed = []

    def call(name: str) -> None:
        if name == "get" and "on" in bmc.calls and not failed:
            failed.append(1)
            bmc.calls.append(name)
            raise timeout()
        orig(name)

    bmc.call = call  # type: ignore[method-assign]
    result = ctl.power_sync(EP, PowerAction.on)
    assert result.ok and result.state == PowerState.on


def test_already_in_target_state_is_success_without_a_command() -> None:
    ctl, bmc, _, _ = make(state=PowerState.on)
    result = ctl.power_sync(EP, PowerAction.on)
    assert result.ok and not result.changed and bmc.calls == ["get"]
    ctl2, bmc2, _, _ = make(state=PowerState.off)
    assert ctl2.power_sync(EP, PowerAction.soft_off).ok and bmc2.calls == ["get"]


def test_bmc_refusing_a_same_state_command_is_success_if_state_matches() -> None:
    ctl, bmc, _, _ = make(state=PowerState.unknown, refuse_same_state=True)
    bmc.state = PowerState.unknown
    # pre-read says unknown (transitional), the BMC then refuses "on" because it is on
    orig_tick = bmc._tick
    bmc._tick = lambda: None  # type: ignore[method-assign]
    reads = iter([PowerState.unknown, PowerState.on])

    def get() -> PowerState:
        bmc.calls.append("get")
        return next(reads)

    def on() -> None:
        bmc.calls.append("on")
        raise BmcUnsupportedError(bmc="fake", operation="power on", detail="cc=D5h")

    class D(FakeDriver):
        def get_power_state(self) -> PowerState:
            return get()

        def power_on(self) -> None:
            on()

    ctl.factory = lambda ep: D(bmc)
    result = ctl.power_sync(EP, PowerAction.on)
    assert result.ok, result.error
    assert result.state == PowerState.on
    assert bmc.calls == ["get", "on", "get"]
    bmc._tick = orig_tick  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("action", "before", "command"),
    [
        (PowerAction.cycle, PowerState.on, "cycle"),
        (PowerAction.cycle, PowerState.off, "on"),
        (PowerAction.reset, PowerState.on, "reset"),
        (PowerAction.reset, PowerState.off, "on"),
        (PowerAction.off, PowerState.on, "off"),
        (PowerAction.soft_off, PowerState.on, "soft-off"),
        (PowerAction.on, PowerState.unknown, "on"),
    ],
    ids=lambda v: str(v),
)
def test_command_chosen_from_action_and_current_state(
    action: PowerAction, before: PowerState, command: str
) -> None:
    ctl, bmc, _, _ = make(state=before, settle=0.5)
    if before == PowerState.unknown:
        bmc.state = PowerState.unknown
    result = ctl.power_sync(EP, action)
    assert bmc.calls[1] == command
    assert result.ok, result.error
    assert result.state == action.target


def test_unreachable_read_is_unknown_never_the_last_known_state() -> None:
    ctl, bmc, _, _ = make(state=PowerState.on)
    assert ctl.get_power_state_sync(EP).state == PowerState.on
    bmc.failures = [timeout() for _ in range(10)]
    result = ctl.get_power_state_sync(EP)
    assert result.state == PowerState.unknown and not result.ok


def test_boot_device_is_read_back() -> None:
    ctl, bmc, _, _ = make()
    result = ctl.set_boot_device_sync(EP, BootDevice.pxe, persistent=True, uefi=True)
    assert result.ok and result.boot == BootSetting(BootDevice.pxe, True, True)
    assert bmc.calls == ["set-boot", "get-boot"]
    with pytest.raises(BmcTimeoutError):
        ctl2, bmc2, _, _ = make()
        bmc2.failures = [timeout() for _ in range(10)]
        ctl2.set_boot_device_sync(EP, BootDevice.pxe).raise_for_error()


# -- pacing, serialization, limits -----------------------------------------------------


def test_min_interval_between_calls_to_one_bmc() -> None:
    policy = PowerPolicy(**{**POLICY.__dict__, "min_interval": 0.5, "poll_interval": 0.1})
    ctl, bmc, clock, _ = make(policy, settle=0.0)
    ctl.get_power_state_sync(EP)
    clock.sleeps.clear()
    ctl.get_power_state_sync(EP)  # immediately after: must wait the remaining interval
    assert clock.sleeps == [0.5]  # measured from the end of the previous call
    other = BmcEndpoint(DriverKind.ipmi, "10.0.0.6", 623, "admin", "pw")
    clock.sleeps.clear()
    ctl.get_power_state_sync(other)  # another BMC is not paced
    assert clock.sleeps == []


class Tracker:
    """Counts drivers in flight, per BMC and overall, with real threads and time."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.lock = threading.Lock()
        self.active: dict[str, int] = defaultdict(int)
        self.max_active: dict[str, int] = defaultdict(int)
        self.total = 0
        self.max_total = 0

    def factory(self, ep: BmcEndpoint) -> object:
        tracker = self

        class D(FakeDriver):
            def get_power_state(self) -> PowerState:
                with tracker.lock:
                    tracker.active[ep.key] += 1
                    tracker.total += 1
                    tracker.max_active[ep.key] = max(
                        tracker.max_active[ep.key], tracker.active[ep.key]
                    )
                    tracker.max_total = max(tracker.max_total, tracker.total)
                time.sleep(tracker.hold)
                with tracker.lock:
                    tracker.active[ep.key] -= 1
                    tracker.total -= 1
                return PowerState.off

        return D(FakeBmc(FakeClock()))


def endpoints(n: int) -> list[BmcEndpoint]:
    return [BmcEndpoint(DriverKind.ipmi, f"10.0.0.{i + 10}", 623, "a", "b") for i in range(n)]


def run_threads(fns: list[Callable[[], object]]) -> None:
    threads = [threading.Thread(target=f) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def test_one_operation_at_a_time_per_bmc() -> None:
    tracker = Tracker(hold=0.05)
    ctl = BmcController(tracker.factory, PowerPolicy(min_interval=0.0, max_concurrency=8))  # type: ignore[arg-type]
    a, b = endpoints(2)
    run_threads([lambda ep=ep: ctl.get_power_state_sync(ep) for ep in [a] * 4 + [b] * 4])
    assert tracker.max_active[a.key] == 1 and tracker.max_active[b.key] == 1
    assert tracker.max_total == 2  # different BMCs did run in parallel


def test_global_concurrency_limit() -> None:
    tracker = Tracker(hold=0.05)
    ctl = BmcController(tracker.factory, PowerPolicy(min_interval=0.0, max_concurrency=3))  # type: ignore[arg-type]
    run_threads([lambda ep=ep: ctl.get_power_state_sync(ep) for ep in endpoints(12)])
    assert tracker.max_total == 3


def test_async_entry_points_respect_limits_and_return_results() -> None:
    tracker = Tracker(hold=0.05)
    ctl = BmcController(tracker.factory, PowerPolicy(min_interval=0.0, max_concurrency=4))  # type: ignore[arg-type]
    eps = endpoints(8) * 2

    async def main() -> list[object]:
        return list(await asyncio.gather(*(ctl.get_power_state(ep) for ep in eps)))

    start = time.monotonic()
    results = asyncio.run(main())
    ctl.close()
    assert all(r.ok and r.state == PowerState.off for r in results)  # type: ignore[attr-defined]
    assert tracker.max_total <= 4
    assert max(tracker.max_active.values()) == 1
    assert time.monotonic() - start < 2


def test_netpolicy_is_enforced_before_any_call() -> None:
    from bmc import BmcAddressRefused, NetPolicy

    ctl, bmc, _, built = make()
    ctl.netpolicy = NetPolicy()
    result = ctl.power_sync(BmcEndpoint(DriverKind.ipmi, "169.254.169.254", 623), PowerAction.on)
    assert isinstance(result.error, BmcAddressRefused)
    assert built == [] and bmc.calls == []


# -- sessions kept between operations -------------------------------------------------


class ClosingDriver(FakeDriver):
    closed: list[int] = []

    def close(self) -> None:
        self.closed.append(1)


def make_closing(
    policy: PowerPolicy = POLICY, **bmc_kw: object
) -> tuple[BmcController, FakeBmc, FakeClock, list[int], list[int]]:
    ctl, bmc, clock, built = make(policy, **bmc_kw)
    closed: list[int] = []

    def factory(ep: BmcEndpoint) -> FakeDriver:
        built.append(1)
        drv = ClosingDriver(bmc)
        drv.closed = closed
        return drv

    ctl.factory = factory
    return ctl, bmc, clock, built, closed


def test_session_is_reused_by_the_next_operation_on_the_bmc() -> None:
    ctl, bmc, clock, built, closed = make_closing()
    assert ctl.power_sync(EP, PowerAction.on).ok
    assert ctl.get_power_state_sync(EP).ok
    assert ctl.set_boot_device_sync(EP, BootDevice.pxe).ok
    assert len(built) == 1 and closed == [] and ctl.open_sessions() == 1


def test_other_credentials_get_their_own_session() -> None:
    ctl, bmc, clock, built, closed = make_closing()
    ctl.get_power_state_sync(EP)
    ctl.get_power_state_sync(BmcEndpoint(DriverKind.ipmi, "10.0.0.5", 623, "admin", "new-pw"))
    assert len(built) == 2 and len(closed) == 1


def test_dead_reused_session_is_reauthenticated_at_once() -> None:
    ctl, bmc, clock, built, closed = make_closing()
    ctl.get_power_state_sync(EP)
    bmc.failures = [timeout()]  # e.g. the BMC restarted and forgot the session
    result = ctl.get_power_state_sync(EP)
    assert result.ok and result.attempts == 1
    assert clock.sleeps == []  # no backoff: a fresh session is tried immediately
    assert len(built) == 2 and len(closed) == 1


def test_fresh_session_failure_still_goes_through_the_retry_policy() -> None:
    ctl, bmc, clock, built, closed = make_closing()
    ctl.get_power_state_sync(EP)
    bmc.failures = [timeout(), timeout()]  # reused fails, the fresh one fails too
    result = ctl.get_power_state_sync(EP)
    assert result.ok and result.attempts == 2 and clock.sleeps == [1.0]


def test_idle_sessions_are_closed_and_zero_idle_disables_reuse() -> None:
    ctl, bmc, clock, built, closed = make_closing()
    ctl.get_power_state_sync(EP)
    assert ctl.reap_idle_sessions() == 0  # not idle long enough
    clock.now += POLICY.session_idle
    assert ctl.reap_idle_sessions() == 1 and closed == [1] and ctl.open_sessions() == 0
    ctl.get_power_state_sync(EP)
    assert len(built) == 2

    no_reuse = PowerPolicy(**{**POLICY.__dict__, "session_idle": 0.0})
    ctl, bmc, clock, built, closed = make_closing(no_reuse)
    ctl.get_power_state_sync(EP)
    ctl.get_power_state_sync(EP)
    assert len(built) == 2 and len(closed) == 2 and ctl.open_sessions() == 0


def test_kept_sessions_are_capped() -> None:
    capped = PowerPolicy(**{**POLICY.__dict__, "max_sessions": 2})
    ctl, bmc, clock, built, closed = make_closing(capped)
    eps = [BmcEndpoint(DriverKind.ipmi, f"10.0.0.{i}", 623, "admin", "pw") for i in range(3)]
    for ep in eps:
        assert ctl.get_power_state_sync(ep).ok
    assert ctl.open_sessions() == 2 and len(closed) == 1  # the third closed when it ended
    assert ctl.get_power_state_sync(eps[0]).ok
    assert len(built) == 3  # the first two are still reused


def test_close_closes_parked_sessions() -> None:
    ctl, bmc, clock, built, closed = make_closing()
    ctl.get_power_state_sync(EP)
    ctl.close()
    assert closed == [1] and ctl.open_sessions() == 0


def test_expired_sessions_are_closed_in_parallel() -> None:
    # Each close waits until all 8 are closing at once: one after the other would break the
    # barrier (a polite IPMI close to a BMC that went away waits 1 s for an answer).
    barrier = threading.Barrier(8, timeout=10)
    met: list[int] = []

    class SlowClose(FakeDriver):
        def close(self) -> None:
            barrier.wait()
            met.append(1)

    clock = FakeClock()
    ctl = BmcController(lambda ep: SlowClose(FakeBmc(clock)), POLICY, clock, rng=lambda: 0.5)
    eps = [BmcEndpoint(DriverKind.ipmi, f"10.0.0.{i}", 623, "admin", "pw") for i in range(8)]
    for ep in eps:
        assert ctl.get_power_state_sync(ep).ok
    assert ctl.reap_idle_sessions(idle=0.0) == 8
    assert len(met) == 8 and ctl.open_sessions() == 0
