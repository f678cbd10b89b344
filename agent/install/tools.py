"""External tools the installer runs, and the block-device plumbing around them.

Every tool is run by absolute argv (no shell), with its output captured; a missing tool is an
:class:`InstallError` naming the Debian package that provides it. Partition device nodes are
found through sysfs, not udev (``/dev/disk/by-partlabel`` does not exist in an initramfs or a
container): after partitioning, ``partx --update`` makes the kernel reread the table and, if
devtmpfs has not created a node yet, we create it from ``/sys/class/block/<name>/dev``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = {
    "sfdisk": "fdisk",
    "partx": "util-linux",
    "blockdev": "util-linux",
    "blkid": "util-linux",
    "wipefs": "util-linux",
    "blkdiscard": "util-linux",
    "lsblk": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "grub-install": "grub2-common (targets: grub-pc-bin, grub-efi-amd64-bin)",
    "grub-editenv": "grub-common",
    "grub-mkimage": "grub-common (EFI modules: grub-efi-amd64-bin)",
    "mmd": "mtools",
    "mcopy": "mtools",
    "udevadm": "udev (grub-install asks it for partition offsets)",
}


class InstallError(Exception):
    """Installing or upgrading failed; the message says which step and why."""


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pkg = PACKAGES.get(tool, "?")
        raise InstallError(f"{tool} not found: install the Debian package {pkg}")
    return path


def run(argv: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a tool (``env``: added to the environment); its stdout, or :class:`InstallError`
    with its stderr."""
    exe = require(argv[0])
    log.debug("run argv=%s", argv)
    proc = subprocess.run(
        [exe, *argv[1:]], input=stdin, capture_output=True, text=True, check=False,
        env={**os.environ, **env} if env else None,
    )  # fmt: skip
    if proc.returncode != 0:
        raise InstallError(
            f"{argv[0]} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout


def device_size(device: str) -> int:
    return int(run(["blockdev", "--getsize64", device]).strip())


def partition_labels(disk: str) -> dict[str, int]:
    """GPT partition label -> partition number, read from the disk's table."""
    table = json.loads(run(["sfdisk", "--json", disk]))["partitiontable"]
    out: dict[str, int] = {}
    for p in table.get("partitions", []):
        name = p.get("name")
        if name:
            out[name] = int(p["node"][len(_prefix(disk)) :])
    return out


def _prefix(disk: str) -> str:
    """``/dev/loop0`` -> ``/dev/loop0p``; ``/dev/sda`` -> ``/dev/sda`` (kernel naming)."""
    return disk + "p" if disk[-1].isdigit() else disk


def partition_node(disk: str, number: int, *, wait: float = 10.0) -> str:
    """The device node of partition ``number`` of ``disk``, created if devtmpfs lags."""
    node = f"{_prefix(disk)}{number}"
    sysfs = Path("/sys/class/block") / Path(node).name / "dev"
    deadline = time.monotonic() + wait
    while not sysfs.exists():
        if time.monotonic() > deadline:
            raise InstallError(f"kernel shows no partition {number} of {disk} ({sysfs})")
        subprocess.run([require("partx"), "--update", disk], capture_output=True, check=False)
        time.sleep(0.1)
    if not os.path.exists(node):
        major, minor = (int(x) for x in sysfs.read_text().split(":"))
        try:
            os.mknod(node, 0o600 | 0o060000, os.makedev(major, minor))
        except FileExistsError:
            pass
    return node


def mounted_devices() -> set[str]:
    with open("/proc/mounts") as f:
        return {line.split()[0] for line in f}


def mountpoint_of(node: str) -> str | None:
    """Where ``node`` is mounted (the first place), or None."""
    with open("/proc/mounts") as f:
        for line in f:
            dev, where = line.split()[:2]
            if dev == node:
                return where.replace("\\040", " ")
    return None


@contextmanager
def mounted(node: str, *, readonly: bool = False) -> Iterator[Path]:
    """Mount ``node`` on a fresh temporary directory; sync + unmount on exit."""
    where = Path(tempfile.mkdtemp(prefix="bronze-mnt-"))
    try:
        run(["mount", "-o", "ro" if readonly else "rw", node, str(where)])
        try:
            yield where
        finally:
            os.sync()
            run(["umount", str(where)])
    finally:
        where.rmdir()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """temp file + fsync + rename + fsync(dir): the old or the new content after a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
