"""One contract, every real peer: sushy-emulator (plain and TLS + Basic auth), ipmi_sim,
pyghmi. Each outcome is checked with an independent client (raw httpx GET for Redfish,
``ipmitool -I lanplus -C 3 -E`` for IPMI), not with bronze's own read."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bmc import BmcController, BootDevice, PowerAction, PowerState
from tests.peers import bmc_peers as peers
from tests.peers.bmc_peers import Peer, reference_boot, reference_power
from tests.support.bmc import endpoint_for
from tests.support.wait import eventually

# What each peer records faithfully (emulator limits, not bronze's).
RECORDS_PERSISTENT = {"sushy": False, "sushy-tls": False, "ipmi_sim": False, "pyghmi": True}
RECORDS_UEFI = {"sushy": True, "sushy-tls": True, "ipmi_sim": False, "pyghmi": True}


def events(peer: Peer) -> list[str]:
    """What the peer's power program recorded (IPMI peers only)."""
    if peer.name == "pyghmi":
        path = peer.extra["events"]
        return (
            [ln.split(" ", 1)[1] for ln in path.read_text().splitlines()] if path.exists() else []
        )  # type: ignore[union-attr]
    if peer.name == "ipmi_sim":
        calls = peer.extra["chassis"] / "calls"  # type: ignore[operator]
        return calls.read_text().splitlines() if calls.exists() else []
    return []


def power_on(controller: BmcController, peer: Peer) -> None:
    result = controller.power_sync(endpoint_for(peer), PowerAction.on)
    assert result.ok, result.error
    assert reference_power(peer) == "on"


def test_reads_power_state(peer: Peer, controller: BmcController) -> None:
    result = controller.get_power_state_sync(endpoint_for(peer))
    assert result.ok, result.error
    assert result.state == PowerState.off == reference_power(peer)
    assert result.attempts == 1


def test_power_on_is_verified_and_idempotent(peer: Peer, controller: BmcController) -> None:
    ep = endpoint_for(peer)
    result = controller.power_sync(ep, PowerAction.on)
    assert result.ok, result.error
    assert result.state == PowerState.on and result.changed
    assert reference_power(peer) == "on"
    again = controller.power_sync(ep, PowerAction.on)
    assert again.ok and again.state == PowerState.on and not again.changed


def test_power_off(peer: Peer, controller: BmcController) -> None:
    power_on(controller, peer)
    result = controller.power_sync(endpoint_for(peer), PowerAction.off)
    assert result.ok, result.error
    assert result.state == PowerState.off == reference_power(peer)
    if peer.kind == "ipmi":
        assert any(e in ("off", "set power 0") for e in events(peer))


def test_soft_off(peer: Peer, controller: BmcController) -> None:
    power_on(controller, peer)
    result = controller.power_sync(endpoint_for(peer), PowerAction.soft_off)
    assert result.ok, result.error
    assert result.state == PowerState.off == reference_power(peer)
    if peer.name == "pyghmi":
        assert "soft-off" in events(peer)
    if peer.name == "ipmi_sim":
        assert "set shutdown 1" in events(peer)


def test_cycle_from_on_ends_on(peer: Peer, controller: BmcController) -> None:
    power_on(controller, peer)
    result = controller.power_sync(endpoint_for(peer), PowerAction.cycle)
    assert result.ok, result.error
    assert result.state == PowerState.on == reference_power(peer)
    if peer.name == "pyghmi":
        assert "cycle" in events(peer)
    if peer.name == "ipmi_sim":  # ipmi_sim implements cycle as power 0, later power 1
        assert "set power 0" in events(peer)


def test_cycle_and_reset_from_off_power_on(peer: Peer, controller: BmcController) -> None:
    for action in (PowerAction.cycle, PowerAction.reset):
        result = controller.power_sync(endpoint_for(peer), PowerAction.off)
        assert result.ok and reference_power(peer) == "off"
        result = controller.power_sync(endpoint_for(peer), action)
        assert result.ok, result.error
        assert result.state == PowerState.on == reference_power(peer)


def test_reset_from_on(peer: Peer, controller: BmcController) -> None:
    power_on(controller, peer)
    result = controller.power_sync(endpoint_for(peer), PowerAction.reset)
    assert result.ok, result.error
    assert result.state == PowerState.on == reference_power(peer)
    if peer.name == "pyghmi":
        assert "reset" in events(peer)
    if peer.name == "ipmi_sim":
        assert "set reset 1" in events(peer)


def _device_matches(peer: Peer, seen: object, device: BootDevice) -> bool:
    if peer.kind == "redfish":
        return seen == {"pxe": "Pxe", "disk": "Hdd"}[device.value]
    wanted = {"pxe": "Force PXE", "disk": "Force Boot from default Hard-Drive"}[device.value]
    return wanted in str(seen)


def test_boot_pxe_once(peer: Peer, controller: BmcController) -> None:
    result = controller.set_boot_device_sync(
        endpoint_for(peer), BootDevice.pxe, persistent=False, uefi=False
    )
    assert result.ok, result.error
    assert result.boot is not None and result.boot.device == BootDevice.pxe
    seen = reference_boot(peer)
    assert _device_matches(peer, seen["device"], BootDevice.pxe)
    if RECORDS_PERSISTENT[peer.name]:
        assert seen["persistent"] is False
    if RECORDS_UEFI[peer.name]:
        assert seen["uefi"] is False


def test_boot_disk_persistent_uefi(peer: Peer, controller: BmcController) -> None:
    result = controller.set_boot_device_sync(
        endpoint_for(peer), BootDevice.disk, persistent=True, uefi=True
    )
    assert result.ok, result.error
    seen = reference_boot(peer)
    assert _device_matches(peer, seen["device"], BootDevice.disk)
    if RECORDS_PERSISTENT[peer.name]:
        assert seen["persistent"] is True and result.boot and result.boot.persistent
    if RECORDS_UEFI[peer.name]:
        assert seen["uefi"] is True and result.boot and result.boot.uefi


def test_out_of_band_change_is_read(peer: Peer, controller: BmcController) -> None:
    """Someone else powers the host on (ipmitool / raw Redfish POST): bronze sees it."""
    if peer.kind == "ipmi":
        peers.ipmitool(peer, "chassis", "power", "on")
    else:
        auth = (peer.username, peer.password) if peer.username else None
        import ssl

        verify: object = ssl.create_default_context(cadata=peer.ca_pem) if peer.ca_pem else True
        with httpx.Client(verify=verify, trust_env=False, timeout=5) as c:  # type: ignore[arg-type]
            r = c.post(
                f"{peer.scheme}://{peer.address}:{peer.port}/redfish/v1/Systems/"
                f"{peers.SYSTEM_UUID}/Actions/ComputerSystem.Reset",
                json={"ResetType": "On"},
                auth=auth,
            )
            assert r.status_code in (200, 202, 204), r.text
    ep = endpoint_for(peer)
    eventually(lambda: controller.get_power_state_sync(ep).state == PowerState.on)
    assert reference_power(peer) == "on"


@pytest.mark.parametrize("peer", ["pyghmi"], indirect=True)
def test_async_entry_points(peer: Peer, controller: BmcController) -> None:
    ep = endpoint_for(peer)

    async def scenario() -> tuple[object, ...]:
        boot = await controller.set_boot_device(ep, BootDevice.pxe, persistent=False)
        on = await controller.power(ep, PowerAction.on)
        state = await controller.get_power_state(ep)
        return boot, on, state

    boot, on, state = asyncio.run(scenario())
    assert boot.ok and on.ok and state.ok
    assert state.state == PowerState.on == reference_power(peer)
