"""The rendered ``/init``: valid ``sh``, the right steps in the right order, and a run under
busybox ``sh`` with every command stubbed (no chroot, nothing mounted, nothing rebooted)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.image.init_script import UDHCPC_SCRIPT, InitConfig, render_init

MODULES = ["kernel/drivers/virtio/virtio.ko", "kernel/drivers/net/virtio_net.ko"]
CFG = InitConfig(kernel_version="6.1.0-56-amd64", modules=MODULES)
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


@pytest.mark.parametrize("shell", ["sh", "busybox-sh"])
@pytest.mark.parametrize(
    "text",
    [render_init(CFG), render_init(InitConfig("6.1.0", [])), UDHCPC_SCRIPT],
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
        ("for m in kernel/drivers/virtio/virtio.ko kernel/drivers/net/virtio_net.ko; do",
         "$bb mount -t devtmpfs"),
        ("moddir=/lib/modules/6.1.0-56-amd64", None),
        ("$bb udhcpc -i \"$ifc\" -s /etc/bronze/udhcpc.script", "for m in"),
        ("findfs LABEL=STATE", "$bb udhcpc"),
        ('state_args="--state /system/state/agent"', "findfs LABEL=STATE"),
        ('$bb mount -t ext4 "$dev" /var', "findfs LABEL=EPHEMERAL"),
        ('python3 -m agent.main run $state_args --reboot-command "$bb reboot" &',
         '$bb mount -t ext4 "$dev" /var'),
        ("trap 'power reboot' TERM INT", None),
        ("trap 'power poweroff' USR2", None),
    ],
    ids=["shebang", "devtmpfs", "modules", "moddir", "dhcp", "state", "agent-state",
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
  cat) [ "$2" = /proc/cmdline ] && echo "$CMDLINE" || /bin/cat "$2" ;;
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


def _run_init(tmp_path: Path, cmdline: str) -> list[str]:
    bb, agent, log = tmp_path / "bb", tmp_path / "agent", tmp_path / "calls"
    bb.write_text(STUB)
    agent.write_text(AGENT)
    bb.chmod(0o755)
    agent.chmod(0o755)
    cfg = InitConfig(
        "6.1.0-test", MODULES, busybox=str(bb), console=str(tmp_path / "no-console"),
        agent=str(agent), agent_restart_seconds=0,
    )  # fmt: skip
    text = render_init(cfg).replace("> /var/log/dmesg", f"> {tmp_path}/dmesg")
    init = tmp_path / "init"
    init.write_text(text)
    env = {"STUBLOG": str(log), "CMDLINE": cmdline, "PATH": os.environ["PATH"]}
    proc = subprocess.run(
        [BUSYBOX, "sh", str(init)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr  # killed by the stub's poweroff: the end
    return log.read_text().splitlines() + ["OUT " + line for line in proc.stdout.splitlines()]


def test_installed_boot_under_busybox(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, "console=ttyS0 bronze.slot=A bronze.init_exit=poweroff")
    inserted = [c for c in calls if c.startswith("insmod")]
    assert inserted == [f"insmod /lib/modules/6.1.0-test/{m}" for m in MODULES]
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
