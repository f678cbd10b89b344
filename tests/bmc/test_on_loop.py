"""The async API runs IPMI power operations on the event loop (bmc.aoperation, bmc.ipmi_aio):
the same contract as the threads, against the real IPMI peers (ipmi_sim, pyghmi, the lean
simulator of the benchmarks), each outcome checked with ipmitool.

That an operation ran on the loop is seen by the thread its observer is called on (the thread
that ran the operation): the test's own, which runs the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from bmc import (
    BmcAuthError,
    BmcConnectionError,
    BmcController,
    BmcEndpoint,
    BmcResult,
    BmcTransientError,
    DriverKind,
    DriverTimeouts,
    PowerAction,
    PowerState,
)
from bmc.actions import default_driver_factory
from tests.bmc.test_ipmi_sim import Sim
from tests.peers import bmc_peers as peers
from tests.support.bmc import FAST, PASSWORD, endpoint_for, start_peer


def run(coro: Coroutine[Any, Any, BmcResult]) -> BmcResult:
    return asyncio.run(coro)


@pytest.fixture
def threads() -> list[int]:
    """The threads that ran each finished operation."""
    return []


@pytest.fixture
def ctl(controller: BmcController, threads: list[int]) -> BmcController:
    controller.observers.append(lambda ep, name, result: threads.append(threading.get_ident()))
    return controller


@pytest.fixture(params=["ipmi_sim", "pyghmi"])
def ipmi_peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[peers.Peer]:
    p = start_peer(request.param, tmp_path / request.param)
    try:
        yield p
    finally:
        p.stop()


def on_loop(threads: list[int]) -> bool:
    return bool(threads) and set(threads) == {threading.get_ident()}


def test_power_actions_on_the_loop(
    ipmi_peer: peers.Peer, ctl: BmcController, threads: list[int]
) -> None:
    ep = endpoint_for(ipmi_peer)
    assert run(ctl.get_power_state(ep)).state == PowerState.off == peers.reference_power(ipmi_peer)
    on = run(ctl.power(ep, PowerAction.on))
    assert on.ok and on.changed and on.state == PowerState.on, on.error
    assert peers.reference_power(ipmi_peer) == "on"
    again = run(ctl.power(ep, PowerAction.on))
    assert again.ok and not again.changed
    for action in (PowerAction.cycle, PowerAction.reset):
        result = run(ctl.power(ep, action))
        assert result.ok and result.state == PowerState.on and result.polls >= 1, result.error
    soft = run(ctl.power(ep, PowerAction.soft_off))
    assert soft.ok and soft.state == PowerState.off, soft.error
    assert peers.reference_power(ipmi_peer) == "off"
    cycled = run(ctl.power(ep, PowerAction.cycle))  # from off: powers on
    assert cycled.ok and cycled.state == PowerState.on, cycled.error
    off = run(ctl.power(ep, PowerAction.off))
    assert off.ok and peers.reference_power(ipmi_peer) == "off"
    assert on_loop(threads)
    assert ctl.open_sessions() == 1  # one session served every operation


def test_session_kept_across_loop_and_thread_operations(
    tmp_path: Path, ctl: BmcController, threads: list[int]
) -> None:
    peer = start_peer("pyghmi", tmp_path / "pyghmi")
    try:
        ep = endpoint_for(peer)
        assert run(ctl.power(ep, PowerAction.on)).ok
        opened = sessions(peer)
        assert ctl.get_power_state_sync(ep).state == PowerState.on  # blocking API, same session
        assert run(ctl.power(ep, PowerAction.off)).ok
        assert sessions(peer) == opened and ctl.open_sessions() == 1

        peers.restart_ipmi_peer(peer)  # the BMC forgets the session bronze holds
        result = run(ctl.power(ep, PowerAction.on))
        assert result.ok and result.attempts <= 2, result.error  # re-authenticated at once
        assert sessions(peer) == opened + 1
        assert peers.reference_power(peer) == "on"
    finally:
        peer.stop()
    assert on_loop(threads)  # the async ones on the loop (the sync one on this thread too)


def sessions(peer: peers.Peer) -> int:
    path = peer.extra["events"]
    assert isinstance(path, Path)
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if line == f"{peer.port} session")


def test_wrong_password_is_an_auth_error_and_never_logged(
    ipmi_peer: peers.Peer, ctl: BmcController, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + PASSWORD
    with caplog.at_level(logging.DEBUG):
        result = run(ctl.power(endpoint_for(ipmi_peer, password=wrong), PowerAction.on))
    assert isinstance(result.error, BmcAuthError), result.error
    assert result.attempts == 1 and result.state == PowerState.unknown
    assert wrong not in caplog.text and PASSWORD not in caplog.text
    assert peers.reference_power(ipmi_peer) == "off"  # nothing happened


def test_silent_bmc_is_unknown_after_the_retries(threads: list[int]) -> None:
    ctl = BmcController(default_driver_factory(DriverTimeouts(connect=0.3, read=0.3)), FAST)
    ctl.observers.append(lambda ep, name, result: threads.append(threading.get_ident()))
    try:
        with peers.udp_black_hole() as port:
            ep = BmcEndpoint(DriverKind.ipmi, "127.0.0.1", port, "admin", "x")
            result = run(ctl.power(ep, PowerAction.on))
    finally:
        ctl.close()
    assert result.state == PowerState.unknown and result.attempts == FAST.max_attempts
    assert isinstance(result.error, BmcTransientError)
    assert on_loop(threads)


def test_silence_after_the_session_is_a_timeout_then_a_new_session(tmp_path: Path) -> None:
    """A BMC that stops answering mid-session: the exchange on the loop times out, the session
    is dropped (not kept for the next operation), and the next operation works once the BMC is
    back."""
    sim = Sim(tmp_path)
    sim.start()
    ctl = BmcController(default_driver_factory(DriverTimeouts(connect=0.5, read=0.5)), FAST)
    try:
        ep = sim.endpoint()
        assert run(ctl.power(ep, PowerAction.on)).ok
        assert sim.proc is not None
        sim.proc.send_signal(19)  # SIGSTOP: the BMC hangs, its socket stays bound
        start = time.monotonic()
        silent = run(ctl.get_power_state(ep, deadline=1.5))
        assert silent.state == PowerState.unknown
        assert isinstance(silent.error, BmcTransientError), silent.error
        assert time.monotonic() - start < 3
        assert ctl.open_sessions() == 0  # the silent session was dropped, not kept
        sim.proc.send_signal(18)  # SIGCONT
        back = run(ctl.power(ep, PowerAction.cycle))
        assert back.ok and back.state == PowerState.on, back.error
    finally:
        ctl.close()
        sim.stop()


def test_many_bmcs_at_once_on_one_loop(tmp_path: Path) -> None:
    sims = [Sim(tmp_path / str(i)) for i in range(4)]
    for i, sim in enumerate(sims):
        (tmp_path / str(i)).mkdir()
        sim.start()
    ctl = BmcController(default_driver_factory(DriverTimeouts(connect=1.0, read=1.0)), FAST)

    async def cycle_all() -> list[BmcResult]:
        return await asyncio.gather(*(ctl.power(s.endpoint(), PowerAction.cycle) for s in sims))

    try:
        results = asyncio.run(cycle_all())
        assert [r.error for r in results] == [None] * len(sims)
        assert all(r.state == PowerState.on for r in results)
        statuses = [s.ipmitool(17, "chassis", "power", "status") for s in sims]
        assert all(out.strip().endswith("on") for out in statuses), statuses
    finally:
        ctl.close()
        for sim in sims:
            sim.stop()


def test_bmc_gone_mid_session_is_named_unreachable(tmp_path: Path) -> None:
    """The BMC's port closes under a kept session: the kernel's port-unreachable reaches the
    exchange on the loop, and the operation ends as "cannot reach", not as a silent timeout."""
    sim = Sim(tmp_path)
    sim.start()
    ctl = BmcController(default_driver_factory(DriverTimeouts(connect=0.5, read=0.5)), FAST)
    try:
        ep = sim.endpoint()
        assert run(ctl.get_power_state(ep)).ok and ctl.open_sessions() == 1
        sim.stop()
        result = run(ctl.get_power_state(ep))
    finally:
        ctl.close()
    assert result.state == PowerState.unknown
    assert isinstance(result.error, BmcConnectionError), result.error
    assert result.attempts == FAST.max_attempts
