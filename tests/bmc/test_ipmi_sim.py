"""bench/ipmi_sim.py, the lean RMCP+ BMC of the power benchmarks, against two independent
consoles: ipmitool (C, the reference every BMC is tried with) and bronze's driver (python-ipmi).

Both must agree with the simulator on cipher suites 3 and 17, so they agree with each other:
this is where python-ipmi's suite-17 session keys were found to differ from ipmitool's (K1/K2
from 32-byte constants instead of the 20 bytes of IPMI v2.0 section 13.32; see
``bmc.ipmi_keys._SessionKeys``). A restarted simulator forgets its sessions, as a rebooted BMC does,
and bronze must authenticate again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bmc_sim import ROOT, _free_udp_ports
from bmc import BmcController, BmcEndpoint, BootDevice, DriverKind, PowerAction, PowerState
from bmc.ipmi import IpmiDriver, _suite_cache

PASSWORD = "sim-pw-7c1f"  # noqa: S105 - simulated BMC only


class Sim:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_udp_ports(1)[0]
        self.events = tmp / "events"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ipmi_sim", "--ports", str(self.port),
             "--settle", "0.2", "--events", str(self.events)],
            cwd=ROOT,
            env=dict(os.environ, BRONZE_SIM_PASSWORD=PASSWORD),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert json.loads(self.proc.stdout.readline()) == {"ready": [self.port]}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def log(self, what: str) -> int:
        lines = self.events.read_text().splitlines() if self.events.exists() else []
        return lines.count(f"{self.port} {what}")

    def endpoint(self) -> BmcEndpoint:
        return BmcEndpoint(DriverKind.ipmi, "127.0.0.1", self.port, "admin", PASSWORD)

    def ipmitool(self, suite: int, *args: str, password: str = PASSWORD) -> str:
        done = subprocess.run(
            ["ipmitool", "-I", "lanplus", "-C", str(suite), "-E", "-H", "127.0.0.1",
             "-p", str(self.port), "-U", "admin", "-N", "1", "-R", "2", *args],
            env=dict(os.environ, IPMI_PASSWORD=password),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )  # fmt: skip
        return done.stdout + done.stderr


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    s = Sim(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.mark.parametrize("suite", [3, 17])
def test_ipmitool_drives_the_simulator(sim: Sim, suite: int) -> None:
    assert "Chassis Power is off" in sim.ipmitool(suite, "chassis", "power", "status")
    assert "Up/On" in sim.ipmitool(suite, "chassis", "power", "on")
    time.sleep(0.3)  # the settle time
    assert "Chassis Power is on" in sim.ipmitool(suite, "chassis", "power", "status")
    assert "Set Boot Device to pxe" in sim.ipmitool(suite, "chassis", "bootdev", "pxe")
    assert "Force PXE" in sim.ipmitool(suite, "chassis", "bootparam", "get", "5")
    assert "27946b59-9e44-4fa7-8e91-f3527a1ef094" in sim.ipmitool(suite, "mc", "guid")
    refused = sim.ipmitool(suite, "chassis", "power", "status", password="wrong-password")
    assert "Unable to establish IPMI v2 / RMCP+ session" in refused
    assert sim.log("on") == 1 and sim.log("boot 8004000000") == 1


def test_bronze_negotiates_suite_17_and_its_keys_match_ipmitools(sim: Sim) -> None:
    ep = sim.endpoint()
    drv = IpmiDriver(ep)
    try:
        assert drv.get_power_state() == PowerState.off  # the first signed message after RAKP
        assert _suite_cache[ep.key] == 17
        drv.power_on()
        drv.set_boot_device(BootDevice.pxe, persistent=False, uefi=True)
        boot = drv.get_boot_device()
        assert (boot.device, boot.persistent, boot.uefi) == (BootDevice.pxe, False, True)
        assert drv.inspect().uuid == "27946b59-9e44-4fa7-8e91-f3527a1ef094"
    finally:
        drv.close()
    assert sim.log("session") == 1  # suite 17 accepted at once: no fallback
    time.sleep(0.3)  # the settle time
    assert "Chassis Power is on" in sim.ipmitool(17, "chassis", "power", "status")


def test_simulator_restart_forces_reauthentication(sim: Sim, tmp_path: Path) -> None:
    ctl = BmcController()
    try:
        ep = sim.endpoint()
        assert ctl.power_sync(ep, PowerAction.on, settle_timeout=5).ok
        assert ctl.get_power_state_sync(ep).state == PowerState.on
        assert sim.log("session") == 1 and ctl.open_sessions() == 1  # kept and reused
        sim.stop()
        sim.start()  # a rebooted BMC: sessions forgotten, host off
        result = ctl.get_power_state_sync(ep)
        assert result.error is None and result.state == PowerState.off
        assert sim.log("session") == 2  # authenticated again, within the same operation
    finally:
        ctl.close()
