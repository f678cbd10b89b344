"""Deprovisioning: erase what an install wrote (Ironic's "cleaning" in two depths).

* **quick**: every filesystem, RAID and partition-table signature is erased (``wipefs --all``
  on each partition, then on the disk: the primary and backup GPT headers and the protective
  MBR), so the disk reads as blank to the next installer and to ``blkid``; the data blocks stay.
* **full**: every byte goes: ``blkdiscard`` where the device supports it (instant on SSDs), else
  zeros written over the whole device in 4 MiB chunks with ``fsync``, reporting progress;
  then the quick wipe's signatures are gone too.

A simulated machine's disk is the sandbox ``ROOT/system``: quick removes it, full overwrites
every file with zeros first. A disk with a mounted partition is refused (the OS image runs from
RAM; its STATE and EPHEMERAL mounts are released before the wipe by whoever asks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from agent.install.tools import InstallError, mounted_devices, run

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) while a full wipe runs."""


def wipe_disk(device: str, *, full: bool, progress: Progress | None = None) -> int:
    """Wipe a real block device; returns the bytes erased (0 for a quick wipe's signatures)."""
    if not Path(device).is_block_device():
        raise InstallError(f"{device} is not a block device")
    parts = partitions(device)
    busy = sorted(p for p in mounted_devices() if p == device or p in parts)
    if busy:
        raise InstallError(f"{device} has mounted partitions: {', '.join(busy)}")
    done = 0
    if full:
        size = int(run(["blockdev", "--getsize64", device]).strip())
        try:
            run(["blkdiscard", "--force", device])
            done = size
            if progress is not None:
                progress(size, size)
        except InstallError as exc:  # no discard (loop on some filesystems, HDDs): zeros
            log.info("blkdiscard unavailable device=%s (%s): writing zeros", device, exc)
            done = _zero(device, size, progress)
    for p in parts:
        run(["wipefs", "--all", "--force", p])
    run(["wipefs", "--all", "--force", device])
    if parts:  # the kernel forgets the partitions that are gone
        run(["partx", "--delete", device])
    log.info("wiped device=%s full=%s bytes=%d", device, full, done)
    return done


def install_disk() -> str:
    """The disk holding a partition labelled STATE (what ``install`` made), or InstallError."""
    part = run(["blkid", "--match-token", "PARTLABEL=STATE", "--output", "device"]).strip()
    if not part:
        raise InstallError("no installed disk found (no partition labelled STATE): name the disk")
    parent = run(["lsblk", "--noheadings", "--paths", "--output", "PKNAME", part]).strip()
    if not parent:
        raise InstallError(f"cannot tell which disk holds {part}")
    return parent.splitlines()[0]


def partitions(device: str) -> list[str]:
    """The device nodes of the disk's partitions (``lsblk``), none if unpartitioned."""
    tree = json.loads(run(["lsblk", "--json", "--paths", "--output", "NAME", device]))
    kids = tree.get("blockdevices", [{}])[0].get("children") or []
    return [k["name"] for k in kids]


def _zero(device: str, size: int, progress: Progress | None) -> int:
    zeros = bytes(CHUNK)
    done = 0
    fd = os.open(device, os.O_WRONLY)
    try:
        while done < size:
            n = os.write(fd, zeros[: min(CHUNK, size - done)])
            done += n
            if progress is not None and (done % (64 * CHUNK) < CHUNK or done == size):
                progress(done, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return done


def wipe_sandbox(system: Path, *, full: bool) -> int:
    """A simulated machine's disk (``ROOT/system``); returns the bytes erased."""
    if not system.exists():
        return 0
    done = 0
    if full:
        for path in system.rglob("*"):
            if path.is_file() and not path.is_symlink():
                size = path.stat().st_size
                with open(path, "r+b") as f:
                    f.write(bytes(size))
                    f.flush()
                    os.fsync(f.fileno())
                done += size
    shutil.rmtree(system)
    return done
