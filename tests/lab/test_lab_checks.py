"""``bronze lab`` refuses cleanly: missing programs are named with their Debian package (one
line, no traceback), and bad options are refused before anything is created."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from server.lab import config as cfg
from tests.support.procs import BRONZE

pytestmark = pytest.mark.lab


def _lab(tmp_path: Path, *args: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env["PATH"] = path
    return subprocess.run(
        [BRONZE, "lab", "up", "--state-dir", str(tmp_path / "lab"), *args],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_missing_programs_are_named_with_their_package(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    res = _lab(tmp_path, path=str(empty))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr, res.stderr
    for line in (
        "libvirtd (Debian package libvirt-daemon-system)",
        "virsh (Debian package libvirt-clients)",
        "qemu-img (Debian package qemu-utils)",
        "qemu-system-x86_64 (Debian package qemu-system-x86)",
        "scripts/install-system-deps.sh",
    ):
        assert line in res.stderr, res.stderr
    assert not (tmp_path / "lab").exists()  # nothing created


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--machines", "0"], "--machines must be 1..32"),
        (["--machines", "2", "--ipmi", "3"], "--ipmi must be 0..--machines"),
        (["--firmware", "coreboot"], "--firmware must be bios, uefi or mixed"),
        (["--subnet", "8.8.8.0/24"], "private IPv4"),
    ],
)
def test_bad_options_are_refused_before_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    res = _lab(tmp_path, *args, path=os.environ["PATH"])
    assert res.returncode == 1 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "lab").exists()


def test_mixed_firmware_and_domain_xml(tmp_path: Path) -> None:
    plan = cfg.make_plan(
        name="x", subnet="10.98.9.0/24", machines=3, firmware="mixed", ipmi=1,
        memory_mib=512, disk_gib=2, state_dir=tmp_path,
    )  # fmt: skip
    assert [v.firmware for v in plan.vms] == ["bios", "uefi", "bios"]
    assert [v.ipmi_port for v in plan.vms] == [6230, None, None]
    assert plan.server_ip == "10.98.9.1" and plan.pool() == ("10.98.9.100", "10.98.9.150")
    bios, uefi = cfg.domain_xml(plan, plan.vms[0]), cfg.domain_xml(plan, plan.vms[1])
    assert f"type='rom'>{cfg.SEABIOS}<" in bios and "<rom enabled='no'/>" not in bios
    assert f"type='pflash'>{cfg.OVMF_CODE}<" in uefi and "<rom enabled='no'/>" in uefi
    assert "secure='no'" in uefi and str(tmp_path) in uefi  # NVRAM in the lab's dir
    assert len({v.mac for v in plan.vms}) == 3
    # a BMC's PXE override must not hide the disk from the firmware (sanboot --drive 0x80)
    for xml in (bios, uefi):
        assert "<qemu:arg value='-boot'/><qemu:arg value='strict=off'/>" in xml
