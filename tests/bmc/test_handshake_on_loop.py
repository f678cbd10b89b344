"""The RMCP+ handshake of a new IPMI session runs on the event loop (bmc.ipmi_aio.run_blocking:
python-ipmi's own handshake, its socket receives awaited), against the real IPMI peers
(OpenIPMI's ipmi_sim, pyghmi, the lean simulator of the benchmarks), each outcome checked with
ipmitool. Its failures must read exactly as those of the blocking handshake on a thread.

That no thread took part is seen by the controller's thread pool: it is created on first use,
and an async power operation on a new session never used it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bmc import (
    BmcAuthError,
    BmcConnectionError,
    BmcController,
    BmcEndpoint,
    BmcResult,
    BmcTimeoutError,
    DriverKind,
    DriverTimeouts,
    PowerAction,
    PowerState,
)
from bmc.actions import default_driver_factory
from bmc.ipmi import IpmiDriver
from bmc.ipmi_aio import LoopSocket, run_blocking
from tests.bmc.test_ipmi_sim import Sim
from tests.peers import bmc_peers as peers
from tests.support.bmc import FAST, PASSWORD, endpoint_for, start_peer


@pytest.fixture(params=["ipmi_sim", "pyghmi", "lean"])
def ipmi_bmc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    if request.param == "lean":
        sim = Sim(tmp_path)
        sim.start()
        try:
            yield "lean", sim
        finally:
            sim.stop()
        return
    p = start_peer(request.param, tmp_path / request.param)
    try:
        yield request.param, p
    finally:
        p.stop()


def controller(connect: float = 1.0) -> BmcController:
    return BmcController(default_driver_factory(DriverTimeouts(connect=connect, read=5.0)), FAST)


def endpoint(bmc: tuple[str, Any]) -> BmcEndpoint:
    kind, peer = bmc
    ep: BmcEndpoint = peer.endpoint() if kind == "lean" else endpoint_for(peer)
    return ep


def reference_power(bmc: tuple[str, Any]) -> str:
    """The power state as ipmitool reads it."""
    kind, peer = bmc
    if kind == "lean":
        status = peer.ipmitool(17, "chassis", "power", "status")
        return "on" if status.strip().endswith("on") else "off"
    return peers.reference_power(peer)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_new_session_opens_on_the_loop(ipmi_bmc: tuple[str, Any]) -> None:
    """A power action on a BMC without a session: the handshake (with pyghmi, the suite 17 ->
    3 fallback too), the action and its read-back, and no thread ever started."""
    ctl = controller()
    try:
        ep = endpoint(ipmi_bmc)
        result = asyncio.run(ctl.power(ep, PowerAction.on))
        assert result.ok and result.state == PowerState.on and result.changed, result.error
        assert ctl._executor is None  # the pool was never needed
        assert ctl.open_sessions() == 1
        again = asyncio.run(ctl.get_power_state(ep))  # the kept session, on another loop
        assert again.state == PowerState.on and ctl._executor is None
    finally:
        ctl.close()
    assert reference_power(ipmi_bmc) == "on"


def test_driver_handshake_on_the_loop_serves_the_blocking_calls(tmp_path: Path) -> None:
    """The session opened on the loop is python-ipmi's ordinary session: after it, the socket is
    the plain one and the blocking calls (boot override, inspection) use it as they would."""
    sim = Sim(tmp_path)
    sim.start()
    drv = IpmiDriver(sim.endpoint())
    try:
        asyncio.run(drv.open_session_async())
        assert not drv.needs_session()
        assert isinstance(drv._ipmi.interface._sock, socket.socket)  # not the LoopSocket
        assert drv.get_power_state() == PowerState.off
        assert drv.inspect().uuid == "27946b59-9e44-4fa7-8e91-f3527a1ef094"
    finally:
        drv.close()
    assert sim.log("session") == 1  # one session served both


@pytest.mark.parametrize("kind", ["ipmi_sim", "pyghmi"])
def test_wrong_password_reads_as_on_a_thread(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    peer = start_peer(kind, tmp_path / kind)
    ctl = controller()
    wrong = "wrong-" + PASSWORD
    try:
        ep = endpoint_for(peer, password=wrong)
        with caplog.at_level(logging.DEBUG):
            on_loop = asyncio.run(ctl.power(ep, PowerAction.on))
            on_thread = ctl.power_sync(ep, PowerAction.on)
    finally:
        ctl.close()
        peer.stop()
    assert isinstance(on_loop.error, BmcAuthError), on_loop.error
    assert type(on_loop.error) is type(on_thread.error)
    assert str(on_loop.error) == str(on_thread.error)  # the same words, detail included
    assert on_loop.message == on_thread.message
    assert "rejected the credentials of user 'admin'" in (on_loop.message or "")
    assert on_loop.attempts == 1 and on_loop.state == PowerState.unknown
    assert wrong not in caplog.text and PASSWORD not in caplog.text


def test_silent_bmc_times_out_cleanly_on_the_loop() -> None:
    """A BMC that never answers: each attempt's handshake times out on a loop timer, the
    operation ends after its retries as the blocking one does, and no socket is left open."""
    with peers.udp_black_hole() as port:
        ep = BmcEndpoint(DriverKind.ipmi, "127.0.0.1", port, "admin", "x")
        before = open_fds()
        ctl = controller(connect=0.3)
        try:
            on_loop = asyncio.run(ctl.power(ep, PowerAction.on))
            assert ctl._executor is None
            on_thread = ctl.power_sync(ep, PowerAction.on)
        finally:
            ctl.close()
        assert open_fds() == before
    assert isinstance(on_loop.error, BmcTimeoutError), on_loop.error
    assert on_loop.attempts == on_thread.attempts == FAST.max_attempts
    assert str(on_loop.error) == str(on_thread.error)
    assert on_loop.state == PowerState.unknown


def test_closed_port_is_unreachable_on_the_loop() -> None:
    """Nothing listens on the port: the kernel's port-unreachable ends the handshake as "refused
    or dropped the connection", as on a thread."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ep = BmcEndpoint(DriverKind.ipmi, "127.0.0.1", port, "admin", "x")
    ctl = controller(connect=1.0)
    try:
        on_loop = asyncio.run(ctl.get_power_state(ep))
        on_thread = ctl.get_power_state_sync(ep)
    finally:
        ctl.close()
    assert isinstance(on_loop.error, BmcConnectionError), on_loop.error
    assert str(on_loop.error) == str(on_thread.error)
    assert on_loop.message is not None and "refused or dropped" in on_loop.message


def test_handshake_wait_leaves_the_loop_free_and_cancels_cleanly(tmp_path: Path) -> None:
    """While one BMC's handshake waits for an answer that never comes, a whole verified
    operation on another BMC runs on the same loop; cancelling the waiting one raises in it,
    closes its socket and leaves no reader behind."""
    sim = Sim(tmp_path)
    sim.start()
    ctl = controller(connect=5.0)

    async def both() -> tuple[BmcResult, bool]:
        with peers.udp_black_hole() as port:
            silent = BmcEndpoint(DriverKind.ipmi, "127.0.0.1", port, "admin", "x")
            waiting = asyncio.get_running_loop().create_task(ctl.power(silent, PowerAction.on))
            await asyncio.sleep(0)  # the handshake has sent and waits
            live = await ctl.power(sim.endpoint(), PowerAction.cycle)
            still_waiting = not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            return live, still_waiting

    before = open_fds()
    try:
        live, still_waiting = asyncio.run(both())
        assert live.ok and live.state == PowerState.on, live.error
        assert still_waiting
        assert ctl._executor is None
    finally:
        ctl.close()
        sim.stop()
    assert open_fds() == before


def test_loop_socket_waits_on_the_loop_only() -> None:
    """Inside run_blocking a receive waits on the loop (other callbacks run meanwhile: here the
    one that sends the datagram), up to the timeout set; outside it refuses rather than block a
    loop; released, the socket is blocking again with that timeout."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.settimeout(2.0)
        wrapped = LoopSocket(a)
        wrapped.connect(b.getsockname())
        b.connect(a.getsockname())

        def inside() -> bytes:  # the datagram comes while the receive waits on the loop
            asyncio.get_running_loop().call_soon(b.send, b"y")
            return wrapped.recv(16)

        assert asyncio.run(run_blocking(inside)) == b"y"
        wrapped.settimeout(0.05)
        with pytest.raises(TimeoutError, match="timed out"):
            asyncio.run(run_blocking(lambda: wrapped.recv(16)))
        with pytest.raises(RuntimeError):
            wrapped.recv(16)
        assert wrapped.release() is a and a.gettimeout() == 0.05
        b.send(b"z")
        assert a.recv(16) == b"z"
    finally:
        a.close()
        b.close()


def test_run_blocking_keeps_the_callers_context() -> None:
    """The handshake's log lines keep the request and machine of the operation that opened it."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")

    async def main() -> str:
        var.set("op-1")
        return await run_blocking(var.get)

    assert asyncio.run(main()) == "op-1"


def test_socket_leaves_the_loop_when_the_operation_ends(tmp_path: Path) -> None:
    """Between the exchanges of one operation the session's socket stays on the loop's
    selector; when the operation ends it leaves it, so the kept session serves a blocking call
    on a thread while the same loop runs (a reader left behind would take its answer)."""
    sim = Sim(tmp_path)
    sim.start()
    ctl = controller()

    async def main() -> tuple[BmcResult, BmcResult, BmcResult, int, int]:
        ep = sim.endpoint()
        loop = asyncio.get_running_loop()
        watched = len(loop._selector.get_map())  # type: ignore[attr-defined]
        cycled = await ctl.power(ep, PowerAction.cycle)  # several exchanges, one operation
        after = len(loop._selector.get_map())  # type: ignore[attr-defined]
        blocking = await loop.run_in_executor(None, ctl.get_power_state_sync, ep)
        again = await ctl.get_power_state(ep)
        return cycled, blocking, again, watched, after

    try:
        cycled, blocking, again, watched, after = asyncio.run(main())
    finally:
        ctl.close()
        sim.stop()
    assert after == watched  # the kept session's socket is not watched by the loop any more
    assert cycled.ok and cycled.polls >= 1, cycled.error
    assert blocking.ok and blocking.state == PowerState.on and blocking.attempts == 1
    assert again.ok and again.state == PowerState.on
    assert sim.log("session") == 1  # one session served all three, never re-authenticated
