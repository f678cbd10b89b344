"""Installer test helpers: fake OS images, tool checks that fail loudly naming the Debian
package, and the boot-counting cases shared by the pure and the grub-emu tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.install import Manifest
from agent.install.tools import PACKAGES


def make_image(where: Path, version: str) -> tuple[dict[str, Path], Manifest]:
    where.mkdir(parents=True, exist_ok=True)
    files = {"vmlinuz": where / "vmlinuz", "initrd.img": where / "initrd.img"}
    for path in files.values():
        path.write_bytes(version.encode() + os.urandom(300_000))
    return files, Manifest(version, "vmlinuz", ("initrd.img",), ("console=ttyS0",))


TOOLS = ["sfdisk", "mkfs.ext4", "mkfs.vfat", "grub-install", "grub-editenv", "grub-mkimage",
         "mmd", "udevadm", "losetup", "blkid", "grub-emu"]  # fmt: skip


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = {t: PACKAGES.get(t, "util-linux" if t == "losetup" else "grub-emu") for t in missing}
        pytest.fail(f"missing tools {pkgs} (scripts/install-system-deps.sh installs them)")


CASES_EMU = [
    ({}, "A", {}),
    ({"default_slot": "B"}, "B", {"default_slot": "B"}),
    ({"default_slot": "A", "try_slot": "B", "try_count": "3"}, "B",
     {"default_slot": "A", "try_slot": "B", "try_count": "2"}),
    ({"default_slot": "A", "try_slot": "B", "try_count": "1"}, "B",
     {"default_slot": "A", "try_slot": "B", "try_count": "0"}),
    ({"default_slot": "A", "try_slot": "B", "try_count": "0"}, "A", {"default_slot": "A"}),
    ({"default_slot": "B", "try_slot": "A", "try_count": "6"}, "B", {"default_slot": "B"}),
    ({"default_slot": "A", "try_slot": "C", "try_count": "2"}, "A", {"default_slot": "A"}),
    ({"default_slot": "A", "try_count": "2"}, "A", {"default_slot": "A"}),
]  # fmt: skip
CASE_IDS_EMU = ["empty", "default-B", "try-3", "try-last", "tries-spent", "count-over-max",
                "slot-garbage", "count-without-slot"]  # fmt: skip
