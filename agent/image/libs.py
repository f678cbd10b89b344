"""Shared libraries nothing in the image loads, and programs a node never runs, removed.

:func:`replace_with_busybox` first turns the programs busybox also provides into its applets.

``debootstrap`` installs what Debian's package dependencies ask for, including libraries only
apt, dpkg or removed programs link (GnuTLS, libstdc++, Berkeley DB, SQLite, libsystemd, ...).
:func:`prune_libraries` keeps a library of ``usr/lib/<triplet>`` only when some ELF file left in
the image needs it, directly or through another kept library (``DT_NEEDED``, read with
binutils' ``readelf -d``); the rest goes, with the symlinks that name it. Libraries opened with
``dlopen`` name no ``DT_NEEDED`` and are always kept (:data:`DLOPENED`). Programs are kept
except :data:`PROGRAMS_DROPPED` (package management, locale and user management tools, PAM and
Kerberos plugins): whatever the agent and its installer run (util-linux, e2fsprogs, ...) stays,
with its libraries.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from agent.image.debian import remove_matching

LIBDIR = "usr/lib/x86_64-linux-gnu"

DLOPENED: tuple[str, ...] = ("ld-linux*", "libgcc_s.so*", "libnss_*", "libresolv.so*")
"""glibc loads these itself (unwinding for thread cancellation, name services)."""

PROGRAMS_DROPPED: tuple[str, ...] = (
    "usr/bin/dpkg*", "usr/sbin/dpkg*", "usr/bin/gpgv", "usr/bin/localedef", "usr/bin/debconf*",
    "usr/bin/locale", "usr/bin/logger", "usr/bin/lslogins", "usr/sbin/user*", "usr/sbin/group*",
    "usr/sbin/chpasswd", "usr/sbin/chgpasswd", "usr/sbin/newusers", "usr/sbin/*pwconv",
    "usr/sbin/*grpconv", "usr/sbin/ldconfig*", f"{LIBDIR}/security", f"{LIBDIR}/krb5",
    f"{LIBDIR}/engines-3", f"{LIBDIR}/ossl-modules", "usr/bin/bash", "usr/bin/rbash",
    "usr/bin/gpasswd", "usr/bin/newgrp", "usr/bin/chage", "usr/bin/chfn", "usr/bin/chsh",
    "usr/bin/expiry", "usr/bin/tic", "usr/bin/toe", "usr/bin/tabs", "usr/bin/infocmp",
    "usr/bin/tput", "usr/bin/tset", "usr/bin/clear_console", "usr/bin/setterm",
)  # fmt: skip
"""Nobody logs in to a node (no PAM, Kerberos, user management, interactive shell or terminal
tools: ``/bin/sh`` is dash, ``/init`` busybox); no OpenSSL engines; the libraries are fixed
(no ``ldconfig``)."""

FULL_PROGRAMS: frozenset[str] = frozenset(
    {"busybox", "mount", "umount", "blkdiscard", "blockdev", "blkid", "findfs", "losetup",
     "mke2fs", "mkfs.ext4", "e2fsck", "mkfs.vfat", "mkdosfs", "fdisk", "sfdisk", "wipefs",
     "partx", "lsblk", "nsenter", "unshare", "setpriv", "switch_root", "pivot_root"}
)  # fmt: skip
"""Kept as Debian ships them although busybox has an applet of the name: the installer's disk
tools (``agent/install`` uses their options beyond busybox's) and the namespace tools."""

_NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")


class LibsError(Exception):
    """``readelf`` is missing or failed."""


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed(files: list[Path]) -> dict[Path, set[str]]:
    """``DT_NEEDED`` names of each ELF file (``readelf -d``, in batches)."""
    if shutil.which("readelf") is None:
        raise LibsError("readelf not found (install the Debian package binutils)")
    out: dict[Path, set[str]] = {}
    for i in range(0, len(files), 200):
        batch = files[i : i + 200]
        proc = subprocess.run(
            ["readelf", "-dW", *map(str, batch)], capture_output=True, text=True, check=False
        )
        current: Path | None = batch[0] if len(batch) == 1 else None
        for line in proc.stdout.splitlines():
            if line.startswith("File: "):
                current = Path(line[6:].strip())
            elif current is not None and (m := _NEEDED.search(line)):
                out.setdefault(current, set()).add(m.group(1))
    return out


def kept_libraries(roots: dict[Path, set[str]], libs: dict[str, set[str]]) -> set[str]:
    """Library names (sonames) reachable from the programs' needs (pure). ``libs`` maps each
    library name in the library directory to what it needs."""
    keep: set[str] = set()
    todo = [name for needs in roots.values() for name in needs]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo.extend(libs.get(name, ()))
    return keep


def replace_with_busybox(root: Path, busybox: str = "usr/bin/busybox") -> list[str]:
    """Every program of ``usr/bin`` and ``usr/sbin`` that busybox has an applet for (coreutils,
    grep, sed, tar, ...) becomes a symlink to busybox, except :data:`FULL_PROGRAMS`. Nothing in
    the image runs them but a person on the console (``/init`` calls busybox itself, the agent
    runs none of them). Returns the names replaced."""
    bb = root / busybox
    proc = subprocess.run([str(bb), "--list"], capture_output=True, text=True, check=False)
    applets = set(proc.stdout.split())
    if proc.returncode != 0 or not applets:
        raise LibsError(f"{busybox} --list failed (the image needs busybox-static)")
    replaced = []
    for d in ("usr/bin", "usr/sbin"):
        for path in sorted((root / d).iterdir()):
            name = path.name
            if name in applets and name not in FULL_PROGRAMS and not path.is_symlink():
                if path.is_file():
                    path.unlink()
                    path.symlink_to(f"/{busybox}")
                    replaced.append(name)
    return replaced


def prune_libraries(root: Path) -> list[str]:
    """Drop :data:`PROGRAMS_DROPPED`, then every unneeded library; returns the names removed."""
    remove_matching(root, PROGRAMS_DROPPED)
    libdir = root / LIBDIR
    names = {p.name: p for p in libdir.iterdir() if p.name.startswith("lib") and ".so" in p.name}
    real = {n: p.resolve() for n, p in names.items()}
    lib_needs = needed(sorted({p for p in real.values() if _is_elf(p)}))
    libs = {n: lib_needs.get(real[n], set()) for n in names}
    others = []
    for dirpath, dirnames, filenames in os.walk(root):  # symlinks not followed
        if Path(dirpath) == libdir:
            continue
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != root / "usr/lib/modules"]
        for f in filenames:
            p = Path(dirpath, f)
            if not p.is_symlink() and p.is_file() and _is_elf(p):
                others.append(p)
    keep = kept_libraries(needed(others), libs)
    keep |= {n for n in names for pat in DLOPENED if Path(n).match(pat)}
    keep_files = {real[n] for n in keep if n in real}
    removed = []
    for n, p in sorted(names.items()):
        if n not in keep and real[n] not in keep_files:
            p.unlink()
            removed.append(n)
    return removed
