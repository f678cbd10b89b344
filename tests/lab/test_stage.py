"""The end-to-end stage: a lab of 2 TCG VMs booting bronze's OS image with real firmware, driven
through bronze's CLI (and so its REST API) only.

1. ``bronze boot-device set --device pxe --once`` + ``bronze power on``: vm0 (SeaBIOS, the
   iPXE ROM) through its IPMI BMC (VirtualBMC), vm1 (OVMF, its own PXE: ``--firmware mixed``)
   through its Redfish BMC (sushy-emulator, libvirt driver);
2. real firmware netboots bronze's script: ``bronze machines timeline`` shows DHCP -> script ->
   kernel -> initrd for vm0, DHCP -> TFTP (snponly.efi) -> DHCP (iPXE) -> script -> kernel ->
   initrd for vm1;
3. the agent in each VM enrolls over mTLS (``bronze agent show``) and its inventory matches the
   VM (``bronze machines show``: MAC, disk size, memory);
4. a config patch (``bronze config patches create``) with a file and a sysctl: the file read
   back with ``bronze node NAME logs lab`` (/var/log/bronze/lab.log), the sysctl
   ``vm.nr_hugepages=64`` seen as the kernel's 64 huge pages in ``bronze node NAME stats``.

Figures (power-on -> agent enrolled per machine, from bronze's own event times; the stage's
wall time; lab up/down) go to ``test-artifacts/lab/stage.json`` (``BRONZE_TEST_ARTIFACTS``)
and the test's output. They are recorded, never asserted (docs/lab.md has the measured ones).
5-6. on vm0 only (BIOS, IPMI), with vm1 powered off to leave the 2 cores to it: provisioning
   installs the image to its virtual disk and it comes back from the disk as ``ready``; a
   rolling upgrade with ``preserve=true`` keeps a file in EPHEMERAL; a broken image comes back
   on the last good one through boot counting and the BMC power cycle (``install_steps.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.lab.install_steps import install_and_upgrade
from tests.lab.support import LabCli
from tests.support.procs import BRONZE
from tests.support.wait import eventually

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.qemu]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("BRONZE_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "lab"
NAME = "bzst"
MEMORY_MIB = 1024
DISK_GIB = 4
HUGEPAGES = 64  # x 2 MiB


class Stage:
    def __init__(self, lab: LabCli, up: dict[str, Any]) -> None:
        self.lab, self.up = lab, up
        self.vms = {m["name"]: m for m in up["machines"]}
        self.env = {
            **lab.env,
            "BRONZE_URL": up["api_url"],
            "BRONZE_TOKEN_FILE": up["token_file"],
            "BRONZE_CONFIG": "/nonexistent",
            "COLUMNS": "200",
        }

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``bronze ARGS`` inside the lab namespace (the API listens on the bridge address)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.up["netns"], BRONZE, *args],
            capture_output=True, text=True, env=self.env, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def json(self, *args: str, timeout: float = 120) -> Any:
        res = self.cli(*args, "-o", "json", timeout=timeout)
        assert res.returncode == 0, (
            f"bronze {' '.join(args)}: {res.stdout[-3000:]} {res.stderr[-3000:]}"
        )
        return json.loads(res.stdout)

    def console(self, name: str, n: int = 40) -> str:
        path = Path(self.vms[name]["console"])
        text = (
            path.read_bytes().decode("latin-1", "replace").replace("\r", "")
            if path.exists()
            else ""
        )
        return "\n".join(line for line in text.splitlines() if line.strip())[-n * 120 :]

    def diagnostics(self) -> str:
        out = []
        for name in self.vms:
            res = self.cli("machines", "timeline", name, "-o", "json")
            out.append(
                f"--- {name} timeline:\n{res.stdout[-3000:]}\n--- console:\n{self.console(name)}"
            )
        bronze = Path(self.lab.state_dir) / "bronze.log"
        if bronze.exists():
            out.append("--- bronze serve log:\n" + bronze.read_text(errors="replace")[-3000:])
        return "\n".join(out)


@pytest.fixture
def lab() -> Iterator[LabCli]:
    if os.geteuid() != 0:
        raise RuntimeError("the lab stage needs root")
    cli = LabCli(NAME, "10.98.202.0/24", Path(f"/var/lib/bronze-lab-stage-{os.getpid()}"))
    start = time.monotonic()
    try:
        yield cli
    finally:
        t0 = time.monotonic()
        res = cli.run("down", timeout=180)
        FIGURES["lab_down_seconds"] = round(time.monotonic() - t0, 1)
        FIGURES["stage_wall_seconds"] = round(time.monotonic() - start, 1)
        _write_figures()
        assert res.returncode == 0, res.stderr[-2000:]


FIGURES: dict[str, Any] = {}


def _write_figures() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "stage.json").write_text(json.dumps(FIGURES, indent=1) + "\n")
    print("lab stage figures:", json.dumps(FIGURES))


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _in_order(want: list[str], got: list[str]) -> bool:
    it = iter(got)
    return all(any(k == w for k in it) for w in want)


def _timeline(stage: Stage, name: str) -> list[dict[str, Any]]:
    data = stage.json("machines", "timeline", name)
    return list(data["items"] if isinstance(data, dict) else data)


@pytest.mark.timeout(3600)
def test_stage_power_netboot_enroll_config_install_upgrade(lab: LabCli) -> None:
    t_stage = time.monotonic()
    FIGURES.clear()
    res = lab.run(
        "up", "--machines", "2", "--ipmi", "1", "--firmware", "mixed", "--memory", str(MEMORY_MIB),
        "--disk", str(DISK_GIB), "-o", "json", timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, f"bronze lab up: {res.stderr[-4000:]}"
    up = json.loads(res.stdout)
    FIGURES["lab_up_seconds"] = up["up_seconds"]
    FIGURES["image"] = up["image"]
    stage = Stage(lab, up)
    vm0, vm1 = f"{NAME}-vm0", f"{NAME}-vm1"
    assert stage.vms[vm0]["ipmi"] and not stage.vms[vm1]["ipmi"]
    shown = {n: stage.json("machines", "show", n) for n in (vm0, vm1)}
    assert shown[vm0]["bmc"]["driver"] == "ipmi" and shown[vm1]["bmc"]["driver"] == "redfish"

    assert stage.vms[vm0]["firmware"] == "bios" and stage.vms[vm1]["firmware"] == "uefi"
    # 1. boot device PXE once (vm0 SeaBIOS: --legacy; vm1 OVMF: --uefi), then power on, each
    # through its own BMC
    for name, mode in ((vm0, "--legacy"), (vm1, "--uefi")):
        for op in stage.json("boot-device", "set", name, "--device", "pxe", "--once", mode):
            assert op["status"] == "succeeded", op
    for op in stage.json("power", "on", vm0, vm1):
        assert op["status"] == "succeeded", op

    # 3. the agents enroll over mTLS (session open = mutual TLS with the fleet CA's certificate)
    def enrolled() -> bool:
        return all(
            (a := stage.json("agent", "show", n))["enrolled"] and a["connected"] for n in (vm0, vm1)
        )

    try:
        eventually(enrolled, timeout=600, interval=2)
    except AssertionError:
        raise AssertionError("agents did not enroll\n" + stage.diagnostics()) from None

    per_machine: dict[str, Any] = {}
    for name in (vm0, vm1):
        tl = _timeline(stage, name)
        steps = [e["kind"] for e in tl]
        on = max(i for i, k in enumerate(steps) if k == "power.succeeded")
        # 2. firmware: DHCP -> (TFTP) -> script -> kernel -> initrd (then the OS's own DHCP).
        # SeaBIOS' iPXE ROM fetches the script over HTTP; OVMF's own PXE first loads
        # snponly.efi (iPXE) over TFTP, and iPXE asks DHCP again. In this order, other steps
        # between allowed (iPXE may ask DHCP twice).
        want = ["DISCOVER", "OFFER", "REQUEST", "ACK"]
        if stage.vms[name]["firmware"] == "uefi":
            want += ["TFTP_COMPLETE", "DISCOVER", "OFFER", "REQUEST", "ACK"]
        want += ["SCRIPT", "KERNEL", "INITRD"]
        assert _in_order(want, steps[on:]), f"{name}: want {want} in order, got {', '.join(steps)}"
        if stage.vms[name]["firmware"] == "bios":
            assert "TFTP_COMPLETE" not in steps[on : steps.index("SCRIPT", on)], steps
        else:
            tftp = next(e for e in tl[on:] if e["kind"] == "TFTP_COMPLETE")
            assert tftp["detail"]["file"] == "snponly.efi", tftp
        kernel = next(e for e in tl[on:] if e["kind"] == "KERNEL")
        initrd = next(e for e in tl[on:] if e["kind"] == "INITRD")
        assert kernel["detail"]["complete"] and initrd["detail"]["complete"], (kernel, initrd)
        agent = stage.json("agent", "show", name)
        assert agent["os"]["image_digest"], agent
        t_on = _t(tl[on]["time"] if "time" in tl[on] else tl[on]["at"])
        per_machine[name] = {
            "bmc": shown[name]["bmc"]["driver"],
            "firmware": stage.vms[name]["firmware"],
            "power_on_to_enrolled_s": round(_t(agent["hello_at"]) - t_on, 1),
        }
        # 3. inventory matches the VM
        hw = stage.json("machines", "show", name)["hardware"]
        assert [n["mac"] for n in hw["nics"]] == [stage.vms[name]["mac"]], hw["nics"]
        assert [(d["name"], int(d["size_bytes"])) for d in hw["disks"]] == [("vda", DISK_GIB << 30)]
        memory = int(hw["memory_bytes"])  # MemTotal: what the kernel keeps for itself is not in it
        assert (MEMORY_MIB << 20) * 0.85 < memory <= MEMORY_MIB << 20, memory
    FIGURES["machines"] = per_machine

    # 4. a config patch: a file and a sysctl, seen through node ops
    before = {n: stage.json("node", n, "stats")[0]["data"] for n in (vm0, vm1)}
    patch = Path(lab.state_dir) / "stage-patch.json"
    lab_file = {"content": "hello from the bronze lab\n", "mode": "0644"}
    patch.write_text(
        json.dumps(
            {
                "files": {"/var/log/bronze/lab.log": lab_file},
                "sysctls": {"vm.nr_hugepages": str(HUGEPAGES)},
            }
        )
    )
    created = stage.json(
        "config", "patches", "create", "lab-stage", "--patch-file", str(patch),
        "--scope", "selector", "-l", f"lab={NAME}",
    )  # fmt: skip
    assert created["machines"] == 2, created

    def applied() -> bool:
        for n in (vm0, vm1):
            a = stage.json("agent", "show", n)
            cmd = a.get("last_command") or {}
            assert cmd.get("ok", True), f"{n}: {cmd}"  # a failed apply fails now, with its error
            if not a["config"]["in_sync"]:
                return False
        return True

    eventually(applied, timeout=120, interval=1)
    for n in (vm0, vm1):
        logs = stage.cli("node", n, "logs", "lab")
        assert logs.returncode == 0 and logs.stdout.strip() == "hello from the bronze lab", logs
        now = stage.json("node", n, "stats")[0]["data"]
        # the kernel holds the 64 huge pages (meminfo's HugePages_Total; the agent read the
        # sysctl back, so an allocation the kernel cut short fails the apply with both values)
        assert (before[n]["hugepages_total"], now["hugepages_total"]) == (0, HUGEPAGES), now
    FIGURES["steps_1_4_s"] = round(time.monotonic() - t_stage, 1)

    # 5-6 on vm0: install to disk, upgrade with preserve, a broken image falls back
    for op in stage.json("power", "off", vm1):
        assert op["status"] == "succeeded", op
    FIGURES["install_upgrade"] = install_and_upgrade(stage, vm0, NAME, Path(lab.state_dir))
    FIGURES["stage_seconds_before_down"] = round(time.monotonic() - t_stage, 1)
