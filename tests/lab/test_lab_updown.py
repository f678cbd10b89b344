"""``bronze lab up`` -> ``down`` leaves the host as it found it, also after a killed ``up``.

Real peers: libvirtd + virtlogd in the lab namespace, two TCG domains (defined, not started:
power is the stage's business), sushy-emulator per VM, VirtualBMC for one, ``bronze serve`` on
the bridge address, machines registered through the REST API. ``--no-image``: the image build
is the stage's (tests/lab/test_stage.py); here the cost is a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.support import LabCli, host_snapshot
from tests.support.wait import eventually

pytestmark = [pytest.mark.lab, pytest.mark.netns]


@pytest.fixture
def lab() -> Iterator[LabCli]:
    if os.geteuid() != 0:
        raise RuntimeError("bronze lab needs root")
    # not under /tmp/pytest-of-root (0700): QEMU runs as libvirt-qemu and opens the disks there
    cli = LabCli("bzlt", "10.98.201.0/24", Path(f"/var/lib/bronze-lab-test-{os.getpid()}"))
    try:
        yield cli
    finally:
        cli.run("down", timeout=120)


def _recorded_pids(lab: LabCli) -> list[tuple[int, int]]:
    """Recorded PIDs, or the ones the children wrote themselves (a killed up)."""
    data = json.loads((lab.state_dir / "state.json").read_text())
    out = []
    for r in data["resources"]:
        if r["kind"] != "proc":
            continue
        if r.get("pid") is None and Path(r["pid_file"]).exists():
            pid, start = Path(r["pid_file"]).read_text().split()
            r["pid"], r["start"] = int(pid), int(start)
        if r.get("pid") is not None:
            out.append((int(r["pid"]), int(r["start"])))
    return out


def _gone(pid: int, start: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X") or int(fields[19]) != start


@pytest.mark.timeout(300)
def test_up_then_down_leaves_the_host_as_found(lab: LabCli) -> None:
    before = host_snapshot(lab)
    up = lab.json("up", "--machines", "2", "--ipmi", "1", "--no-image")
    assert up["status"] == "up"
    vms = {m["name"]: m for m in up["machines"]}
    assert set(vms) == {"bzlt-vm0", "bzlt-vm1"}
    assert vms["bzlt-vm0"]["ipmi"] == "127.0.0.1:6230" and vms["bzlt-vm1"]["ipmi"] is None
    assert all(m["state"] == "shut off" for m in vms.values()), vms  # defined in libvirt
    during = host_snapshot(lab)
    assert during["netns"] == ["bzlt"] and any(
        "blackhole 10.98.201.0/24" in r for r in during["routes"]
    )
    pids = _recorded_pids(lab)
    assert len(pids) == 7, pids  # virtlogd libvirtd 2x sushy vbmcd ra bronze
    status = lab.json("status")
    assert all(p["running"] for p in status["processes"]), status["processes"]
    # the BMC password: in its 0600 file and VirtualBMC's 0600 config, nowhere else (logs, argv)
    password = Path(status["bmc_password_file"]).read_bytes().strip()
    holders = [p for p in lab.state_dir.rglob("*") if p.is_file() and password in p.read_bytes()]
    assert sorted(p.name for p in holders) == ["bmc.password", "config"], holders
    assert all(p.stat().st_mode & 0o077 == 0 for p in holders)
    for proc in Path("/proc").iterdir():
        try:
            assert password not in (proc / "cmdline").read_bytes(), proc
        except OSError:
            continue
    # the lab's bronze answers, and its machines were registered through its REST API with BMCs
    api = status["api_url"]
    token = Path(status["token_file"]).read_text().strip()
    out = subprocess.run(
        ["ip", "netns", "exec", "bzlt", "curl", "-sf", "-H", f"Authorization: Bearer {token}",
         f"{api}/api/v1/machines?selector=lab=bzlt"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    machines = {m["name"]: m for m in json.loads(out)["items"]}
    assert machines["bzlt-vm0"]["bmc"]["driver"] == "ipmi"
    assert machines["bzlt-vm1"]["bmc"]["driver"] == "redfish"
    assert machines["bzlt-vm1"]["nics"][0]["mac"] == vms["bzlt-vm1"]["mac"]

    down = lab.json("down", timeout=120)
    assert down["status"] == "down"
    assert all(_gone(p, s) for p, s in pids), pids
    after = host_snapshot(lab)
    assert after == before
    assert not lab.state_dir.exists()


@pytest.mark.timeout(300)
def test_down_cleans_a_killed_up(lab: LabCli) -> None:
    before = host_snapshot(lab)
    proc = subprocess.Popen(
        lab.args("up", "--machines", "2", "--ipmi", "1", "--no-image"),
        env=lab.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = lab.state_dir / "state.json"

    def midway() -> bool:
        # killed once the BMC emulators are starting: route, netns, libvirtd, domains exist
        if not state.exists():
            return False
        return any(
            r.get("role", "").startswith("redfish-")
            for r in json.loads(state.read_text())["resources"]
        )

    try:
        eventually(midway, timeout=120, interval=0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.5)
    during = host_snapshot(lab)
    assert during["netns"] == ["bzlt"], "the killed up should have left its namespace"
    assert during != before
    pids = _recorded_pids(lab)
    down = lab.json("down", timeout=120)
    assert down["status"] == "down"
    assert all(_gone(p, s) for p, s in pids), pids
    assert host_snapshot(lab) == before
