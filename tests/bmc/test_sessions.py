"""One session per BMC, kept between operations, against real peers.

The pyghmi sim records every RMCP+ Open Session Request it receives ("session" events), so
these tests count the sessions a BMC really saw; restarting a peer on the same port makes it
forget them, as a BMC reboot does, and bronze must authenticate again without failing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bmc import BmcController, BootDevice, PowerAction, PowerState
from tests.peers import bmc_peers as peers
from tests.support.bmc import PASSWORD, endpoint_for, start_peer


def sessions(peer: peers.Peer) -> int:
    path = peer.extra["events"]
    assert isinstance(path, Path)
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if line == f"{peer.port} session")


def test_ipmi_session_is_reused_across_operations(
    tmp_path: Path, controller: BmcController
) -> None:
    peer = start_peer("pyghmi", tmp_path / "pyghmi")
    try:
        ep = endpoint_for(peer)
        assert controller.power_sync(ep, PowerAction.on).ok
        # pyghmi answers suite 17 with suite-3 algorithms: two Open Session Requests, once
        opened = sessions(peer)
        assert opened in (1, 2)
        results = [
            controller.set_boot_device_sync(ep, BootDevice.pxe),
            controller.get_power_state_sync(ep),
            controller.power_sync(ep, PowerAction.off),
        ]
        assert [r.error for r in results] == [None] * 3
        assert sessions(peer) == opened  # three more operations, no new session
        assert controller.open_sessions() == 1

        assert controller.reap_idle_sessions(idle=0.0) == 1  # what the reaper does when idle
        assert controller.open_sessions() == 0
        assert controller.get_power_state_sync(ep).state == PowerState.off
        assert sessions(peer) == opened + 1
        assert peers.reference_power(peer) == "off"
    finally:
        peer.stop()


@pytest.mark.parametrize("name", ["pyghmi", "ipmi_sim"])
def test_bmc_restart_mid_session_forces_reauthentication(
    tmp_path: Path, controller: BmcController, name: str
) -> None:
    peer = start_peer(name, tmp_path / name)
    try:
        ep = endpoint_for(peer)
        assert controller.power_sync(ep, PowerAction.on).ok
        assert controller.open_sessions() == 1
        opened = sessions(peer) if name == "pyghmi" else 0
        peers.restart_ipmi_peer(peer)  # the BMC forgets the session bronze holds

        result = controller.power_sync(ep, PowerAction.on)
        assert result.ok, result.error
        assert result.attempts <= 2  # re-authenticated at once, not retried with backoff
        if name == "pyghmi":
            assert sessions(peer) == opened + 1  # one new session after the restart
        assert peers.reference_power(peer) == "on"  # (ipmitool opens its own session)
    finally:
        peer.stop()


def test_wrong_password_on_a_kept_session_is_still_fatal(
    tmp_path: Path, controller: BmcController
) -> None:
    peer = start_peer("pyghmi", tmp_path / "pyghmi")
    try:
        assert controller.get_power_state_sync(endpoint_for(peer)).ok
        result = controller.get_power_state_sync(endpoint_for(peer, password="wrong-" + PASSWORD))
        assert result.error is not None and "credentials" in str(result.error)
        assert result.attempts == 1
    finally:
        peer.stop()


def test_redfish_connection_is_reused_across_operations(
    tmp_path: Path, controller: BmcController
) -> None:
    peer = start_peer("sushy", tmp_path / "sushy")
    try:
        ep = endpoint_for(peer)
        assert controller.get_power_state_sync(ep).ok
        assert controller.set_boot_device_sync(ep, BootDevice.pxe).ok
        assert controller.get_power_state_sync(ep).ok
        root_gets = re.findall(r'"GET /redfish/v1/? HTTP', peer.output())
        assert len(root_gets) == 1  # the service root and system were looked up once
    finally:
        peer.stop()
