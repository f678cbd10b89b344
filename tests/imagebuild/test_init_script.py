"""The rendered ``/init``: valid ``sh``, the right steps in the right order, and a run under
busybox ``sh`` with every command stubbed (no chroot, nothing mounted, nothing rebooted)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.image.init_script import UDHCPC_SCRIPT, InitConfig, render_init
from agent.image.modules import Driver

VIRTIO = "kernel/drivers/virtio/virtio.ko"
VIRTIO_PCI = "kernel/drivers/virtio/virtio_pci.ko"
VIRTIO_NET = "kernel/drivers/net/virtio_net.ko"
E1000E = "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko"
AHCI = "kernel/drivers/ata/ahci.ko"
LIBATA = "kernel/drivers/ata/libata.ko"
AF_PACKET = "kernel/net/packet/af_packet.ko"
EXT4 = "kernel/fs/ext4/ext4.ko"
DRIVERS = [
    Driver("virtio_pci", ("pci:v00001AF4d*sv*sd*bc*sc*i*",), (VIRTIO, VIRTIO_PCI)),
    Driver("virtio_net", ("virtio:d00000001v*",), (VIRTIO, VIRTIO_NET)),
    Driver("e1000e", ("pci:v00008086d000010D3sv*sd*bc*sc*i*",), (E1000E,)),
    Driver("ahci", ("pci:v*d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv*sd*bc*sc*i*"),
           (LIBATA, AHCI)),
]  # fmt: skip
CFG = InitConfig(
    kernel_version="6.1.0-56-amd64",
    drivers=DRIVERS,
    net_modules=[AF_PACKET],
    storage_modules=[EXT4],
)
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


@pytest.mark.parametrize("shell", ["sh", "busybox-sh"])
@pytest.mark.parametrize(
    "text",
    [render_init(CFG), render_init(InitConfig("6.1.0")), UDHCPC_SCRIPT],
    ids=["init", "init-no-modules", "udhcpc-hook"],
)
def test_syntax(tmp_path: Path, shell: str, text: str) -> None:
    script = tmp_path / "script"
    script.write_text(text)
    cmd = ["sh", "-n", str(script)] if shell == "sh" else [BUSYBOX, "sh", "-n", str(script)]
    subprocess.run(cmd, check=True)


@pytest.mark.parametrize(
    ("fragment", "after"),
    [
        ("#!/bin/busybox sh\n", None),
        ("$bb mount -t devtmpfs devtmpfs /dev", "$bb mount -t proc proc /proc"),
        (f'case "$1" in virtio:d00000001v*) load {VIRTIO} {VIRTIO_NET};; esac',
         "$bb mount -t devtmpfs"),
        ("/sys/bus/pci/devices/*/modalias /sys/bus/virtio/devices/*/modalias", "probe() {"),
        ("moddir=/lib/modules/6.1.0-56-amd64", None),
        (f"load {AF_PACKET}\n", "probe() {"),
        (f"load {EXT4} &", 'probe "$a"'),
        ("$bb udhcpc -i \"$ifc\" -s /etc/bronze/udhcpc.script", f"load {EXT4} &"),
        ("wait $storage", "$bb udhcpc"),
        ("findfs LABEL=STATE", "$bb udhcpc"),
        ('state_args="--state /system/state/agent"', "findfs LABEL=STATE"),
        ('$bb mount -t ext4 "$dev" /var', "findfs LABEL=EPHEMERAL"),
        ('python3 -m agent.main run $state_args --reboot-command "$bb reboot" &',
         '$bb mount -t ext4 "$dev" /var'),
        ("trap 'power reboot' TERM INT", None),
        ("trap 'power poweroff' USR2", None),
    ],
    ids=["shebang", "devtmpfs", "driver-case", "modaliases", "moddir", "af-packet", "storage",
         "dhcp", "storage-waited", "state", "agent-state",
         "ephemeral", "agent", "trap-reboot", "trap-poweroff"],
)  # fmt: skip
def test_rendered_steps(fragment: str, after: str | None) -> None:
    text = render_init(CFG)
    assert fragment in text
    if after is not None:
        assert text.index(after) < text.index(fragment)


STUB = r"""#!/bin/sh
# A stand-in for busybox: records each call; answers the few whose output /init reads.
echo "$*" >> "$STUBLOG"
case "$1" in
  cat) if [ "$2" = /proc/cmdline ]; then echo "$CMDLINE"; else shift; /bin/cat "$@"; fi ;;
  insmod) case "$2" in *virtio_pci.ko)  # the kernel: virtio_pci finds the NIC's virtio device
          /bin/mkdir -p "$SYSFS/bus/virtio/devices/virtio0"
          echo virtio:d00000001v00001AF4 > "$SYSFS/bus/virtio/devices/virtio0/modalias" ;;
          esac ;;
  findfs) case "$2" in LABEL=STATE) echo /dev/vda5 ;; LABEL=EPHEMERAL) echo /dev/vda6 ;;
          *) exit 1 ;; esac ;;
  uname) echo 6.1.0-test ;;
  hostname) [ -n "$2" ] || echo node-1 ;;
  reboot|poweroff) kill -9 "$PPID" ;;
esac
exit 0
"""

AGENT = r"""#!/bin/sh
echo "agent $*" >> "$STUBLOG"
exit 3
"""


PCI = {  # a q35 VM: VGA (no driver in the image), virtio-net, the ICH9 AHCI controller
    "0000:00:01.0": "pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00",
    "0000:00:02.0": "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
    "0000:00:1f.2": "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
}


def _sysfs(tmp_path: Path) -> Path:
    sysfs = tmp_path / "sys"
    for dev, alias in PCI.items():
        (sysfs / "bus/pci/devices" / dev).mkdir(parents=True)
        (sysfs / "bus/pci/devices" / dev / "modalias").write_text(alias + "\n")
    return sysfs


def _run_init(tmp_path: Path, cmdline: str) -> list[str]:
    bb, agent, log = tmp_path / "bb", tmp_path / "agent", tmp_path / "calls"
    bb.write_text(STUB)
    agent.write_text(AGENT)
    bb.chmod(0o755)
    agent.chmod(0o755)
    sysfs = _sysfs(tmp_path)
    cfg = InitConfig(
        "6.1.0-test", DRIVERS, [AF_PACKET], [EXT4], busybox=str(bb),
        console=str(tmp_path / "no-console"), agent=str(agent), agent_restart_seconds=0,
        sysfs=str(sysfs),
    )  # fmt: skip
    text = render_init(cfg).replace("> /var/log/dmesg", f"> {tmp_path}/dmesg")
    init = tmp_path / "init"
    init.write_text(text)
    env = {"STUBLOG": str(log), "CMDLINE": cmdline, "PATH": os.environ["PATH"], "SYSFS": str(sysfs)}
    proc = subprocess.run(
        [BUSYBOX, "sh", str(init)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr  # killed by the stub's poweroff: the end
    out = [
        re.sub(r"^bronze init: \[[0-9.]+\] ", "bronze init: ", ln)
        for ln in proc.stdout.splitlines()
    ]
    return log.read_text().splitlines() + ["OUT " + line for line in out]


def test_only_the_drivers_of_present_devices_load_in_rounds(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, "console=ttyS0 bronze.init_exit=poweroff")
    inserted = [
        c.removeprefix("insmod /lib/modules/6.1.0-test/") for c in calls if c.startswith("insmod")
    ]
    # AF_PACKET; round 1 (PCI): virtio_pci, then ahci by its class pattern; round 2: the
    # virtio device virtio_pci made -> virtio_net (virtio.ko once); e1000e's device is absent;
    # ext4 last, in the background
    assert inserted == [AF_PACKET, VIRTIO, VIRTIO_PCI, LIBATA, AHCI, VIRTIO_NET, EXT4]
    assert (
        "OUT bronze init: modules loaded: 6 ( af_packet virtio virtio_pci libata ahci virtio_net )"
        in calls
    )


def test_installed_boot_under_busybox(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, "console=ttyS0 bronze.slot=A bronze.init_exit=poweroff")
    assert f"insmod /lib/modules/6.1.0-test/{EXT4}" in calls
    assert "mount -t ext4 /dev/vda5 /system/state" in calls
    assert "mount -t ext4 /dev/vda6 /var" in calls
    agent = next(c for c in calls if c.startswith("agent "))
    assert agent == f"agent --state /system/state/agent --reboot-command {tmp_path}/bb reboot"
    assert calls.index("mount -t ext4 /dev/vda6 /var") < calls.index(agent)
    assert calls[-3:] == ["OUT bronze init: starting bronze-agent",
                            "OUT bronze init: bronze-agent exited (status 3)",
                            "OUT bronze init: poweroff"]  # fmt: skip
    assert "poweroff -f" in calls and "umount /system/state" in calls
    assert "OUT bronze init: starting (kernel 6.1.0-test)" in calls


def test_netboot_mounts_nothing(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, "console=ttyS0 bronze.init_exit=poweroff")
    assert not [c for c in calls if c.startswith(("findfs", "mount -t ext4"))]
    agent = next(c for c in calls if c.startswith("agent "))
    assert agent == f"agent --reboot-command {tmp_path}/bb reboot"
