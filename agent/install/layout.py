"""The install disk's layout: one GPT that boots under BIOS and UEFI, with A/B boot slots.

========== ============ ============================================================= ========
label      type         holds                                                         fs
========== ============ ============================================================= ========
BIOS       BIOS boot    GRUB's core.img (grub-pc on GPT has no post-MBR gap)           none
EFI        ESP          ``EFI/BOOT/BOOTX64.EFI`` (GRUB, ``--removable``: no NVRAM)     vfat
BOOT-A     Linux fs     slot A: kernel, initrds, ``manifest.json``, ``boot.cfg``      ext4
BOOT-B     Linux fs     slot B: same                                                  ext4
STATE      Linux fs     ``grub/`` (modules, grub.cfg, grubenv), ``agent/`` identity   ext4
EPHEMERAL  Linux /var   everything else; mounted at /var; wiped on request            ext4
========== ============ ============================================================= ========

Names are GPT partition labels (and the filesystem labels of the same partitions, because
GRUB 2.06's ``search`` finds filesystems by label, not partitions). Everything is aligned to
1 MiB; the disk needs 1 MiB before the first partition and 33 sectors after the last one for
the backup GPT. Which firmware the disk must boot decides whether the BIOS boot partition and
the ESP are present (:class:`Firmware`); both is the default, so one disk boots either way.

This module is pure: it computes numbers and the ``sfdisk`` script; nothing touches a disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MiB = 1024 * 1024
SECTOR = 512
GPT_TAIL = 33 * SECTOR  # backup partition entries (32 sectors) + backup header (1)


class Firmware(StrEnum):
    """What the machine's firmware boots the disk with."""

    BIOS = "bios"
    """Legacy BIOS only: GRUB i386-pc from the protective MBR + BIOS boot partition."""
    UEFI = "uefi"
    """UEFI only: GRUB x86_64-efi from the ESP's removable-media path."""
    BOTH = "both"
    """Both (default): one disk boots whichever way the firmware is set."""


class PartLabel(StrEnum):
    """GPT partition labels (and filesystem labels) of the install disk."""

    BIOS = "BIOS"
    """BIOS boot partition: GRUB's core.img, no filesystem."""
    EFI = "EFI"
    """EFI system partition (vfat): the UEFI GRUB image."""
    BOOT_A = "BOOT-A"
    """Boot slot A: kernel, initrds, manifest."""
    BOOT_B = "BOOT-B"
    """Boot slot B: kernel, initrds, manifest."""
    STATE = "STATE"
    """Small persistent state: GRUB dir + env block, agent identity, machine config."""
    EPHEMERAL = "EPHEMERAL"
    """The rest of the disk, mounted at /var; wiped on an upgrade with preserve=false."""


class FsType(StrEnum):
    """Filesystems the installer makes."""

    VFAT = "vfat"
    """FAT32: what UEFI firmware reads (the ESP)."""
    EXT4 = "ext4"
    """ext4: journaled, read by GRUB's ext2 module, save_env-able (not sparse, not inline)."""


class GptType(StrEnum):
    """GPT partition type GUIDs (UEFI spec; Discoverable Partitions Specification)."""

    BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
    """BIOS boot partition (GRUB embeds core.img here)."""
    ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    """EFI system partition."""
    LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    """Generic Linux filesystem data."""
    LINUX_VAR = "4D21B016-B534-45C2-A9FB-5C16E091FD2D"
    """Linux /var partition."""


@dataclass(frozen=True)
class Partition:
    number: int
    label: PartLabel
    type_guid: GptType
    start: int  # bytes from the start of the disk
    size: int  # bytes
    fs: FsType | None
    mountpoint: str | None = None

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Sizes:
    """Partition sizes (bytes, multiples of 1 MiB); EPHEMERAL gets the rest, at least its min."""

    bios: int = 1 * MiB
    efi: int = 100 * MiB
    boot: int = 512 * MiB
    state: int = 100 * MiB
    ephemeral_min: int = 512 * MiB


class LayoutError(Exception):
    """The disk cannot hold the layout (message says how much is missing)."""


def plan_layout(disk_bytes: int, firmware: Firmware, sizes: Sizes = Sizes()) -> list[Partition]:
    """The partitions for a disk of ``disk_bytes``, in disk order, numbered from 1."""
    fixed: list[tuple[PartLabel, GptType, int, FsType | None, str | None]] = []
    if firmware in (Firmware.BIOS, Firmware.BOTH):
        fixed.append((PartLabel.BIOS, GptType.BIOS_BOOT, sizes.bios, None, None))
    if firmware in (Firmware.UEFI, Firmware.BOTH):
        fixed.append((PartLabel.EFI, GptType.ESP, sizes.efi, FsType.VFAT, "/boot/efi"))
    fixed += [
        (PartLabel.BOOT_A, GptType.LINUX, sizes.boot, FsType.EXT4, None),
        (PartLabel.BOOT_B, GptType.LINUX, sizes.boot, FsType.EXT4, None),
        (PartLabel.STATE, GptType.LINUX, sizes.state, FsType.EXT4, "/system/state"),
    ]
    for label, _, size, _, _ in fixed:
        if size <= 0 or size % MiB:
            raise LayoutError(f"{label} size {size} is not a positive multiple of 1 MiB")
    usable_end = (disk_bytes - GPT_TAIL) // MiB * MiB
    start = MiB
    ephemeral_start = start + sum(f[2] for f in fixed)
    needed = ephemeral_start + sizes.ephemeral_min + GPT_TAIL
    if disk_bytes < needed or usable_end - ephemeral_start < sizes.ephemeral_min:
        raise LayoutError(
            f"disk of {disk_bytes} bytes is too small: the layout needs at least {needed} bytes "
            f"({needed - disk_bytes} more), EPHEMERAL minimum {sizes.ephemeral_min} bytes"
        )
    parts: list[Partition] = []
    for number, (label, gtype, size, fs, mnt) in enumerate(fixed, start=1):
        parts.append(Partition(number, label, gtype, start, size, fs, mnt))
        start += size
    parts.append(
        Partition(
            len(parts) + 1,
            PartLabel.EPHEMERAL,
            GptType.LINUX_VAR,
            start,
            usable_end - start,
            FsType.EXT4,
            "/var",
        )
    )
    return parts


def render_sfdisk(parts: list[Partition]) -> str:
    """The ``sfdisk`` script (its dump format) that creates exactly ``parts`` on a new GPT."""
    lines = ["label: gpt", "unit: sectors", ""]
    for p in parts:
        lines.append(
            f"start={p.start // SECTOR}, size={p.size // SECTOR}, "
            f'type={p.type_guid.value}, name="{p.label.value}"'
        )
    return "\n".join(lines) + "\n"
