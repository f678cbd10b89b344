"""Packing a directory tree into a compressed initramfs (``newc`` cpio), reproducibly.

The kernel unpacks a ``newc`` cpio archive, compressed with any algorithm it was built with
(Debian: gzip, xz, zstd, ...). We use the real tools: ``find`` lists the tree sorted, GNU
``cpio -o -H newc --reproducible -R 0:0`` writes it (every file owned by root, inode numbers
renumbered), and ``zstd``/``xz`` compress it. Modification times are clamped to a fixed epoch
first, so the same tree gives the same bytes. xz needs ``--check=crc32``: the kernel's xz
decoder knows no other check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from enum import StrEnum
from pathlib import Path

EPOCH = 315532800  # 1980-01-01: every file's mtime in the archive


class Compression(StrEnum):
    """How the initramfs is compressed."""

    ZSTD = "zstd"
    """zstd --ultra -20 (a 32 MiB window): fast to unpack at boot, a few percent larger than xz;
    1.26 MB smaller than -19 for the node image, which the kernel unpacks as fast. In jobs of
    52 MiB (:data:`ZSTD_JOB`), so both cores work."""
    XZ = "xz"
    """xz -9e: the smallest archive, slowest to build and to unpack."""


ZSTD_JOB: list[str] = ["-B52M", "--zstd=ovlog=7"]
"""zstd's multithreaded jobs. Level 20's default job is 4 windows (128 MiB): the whole ~103 MB
cpio was one job on one core (62-73 s). 52 MiB jobs give two, each reloading the last 8 MiB
of the one before (``ovlog=7``: a quarter of the window): 34 s, 0.1 % larger. The output
depends on the job size, never on the number of threads (``-T1`` and ``-T2`` write the same
bytes): the same tree packs to the same bytes on any machine."""

_COMMANDS: dict[Compression, list[str]] = {
    Compression.ZSTD: ["zstd", "-q", "--ultra", "-20", "-T0", *ZSTD_JOB, "-c"],
    Compression.XZ: ["xz", "-9e", "-T0", "--check=crc32", "-c"],
}


class CpioError(Exception):
    """A tool is missing or failed."""


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise CpioError(f"{tool} not found (install the Debian package {package})")


def clamp_mtimes(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.utime(os.path.join(dirpath, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def pack(root: Path, out: Path, compression: Compression = Compression.ZSTD) -> None:
    """Write ``root`` as a compressed newc cpio archive to ``out``."""
    _need("cpio", "cpio")
    _need(compression.value, "zstd" if compression is Compression.ZSTD else "xz-utils")
    clamp_mtimes(root)
    listing = subprocess.run(
        ["find", ".", "-mindepth", "1", "-print0"], cwd=root, capture_output=True, check=True
    ).stdout
    names = b"\0".join(sorted(n for n in listing.split(b"\0") if n)) + b"\0"
    with out.open("wb") as fh:
        cpio = subprocess.Popen(
            ["cpio", "-o", "-H", "newc", "-0", "--reproducible", "-R", "0:0", "--quiet"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        comp = subprocess.Popen(_COMMANDS[compression], stdin=cpio.stdout, stdout=fh)
        assert cpio.stdout is not None and cpio.stdin is not None
        cpio.stdout.close()
        _, err = cpio.communicate(names)
        if comp.wait() != 0 or cpio.returncode != 0:
            raise CpioError(f"cpio/{compression.value} failed: {err.decode(errors='replace')}")


def list_members(archive: Path, compression: Compression = Compression.ZSTD) -> list[str]:
    """The names in a compressed cpio archive (``cpio -t``), for tests and inspection."""
    dec = subprocess.Popen([compression.value, "-dc", str(archive)], stdout=subprocess.PIPE)
    out = subprocess.run(
        ["cpio", "-t", "--quiet"], stdin=dec.stdout, capture_output=True, check=True
    ).stdout
    if dec.wait() != 0:
        raise CpioError(f"{compression.value} could not decompress {archive}")
    return out.decode().splitlines()
