"""Unneeded libraries leave the image: a fixture root made of real ELF files from this host
(``ls`` and the libraries it links), read with the real ``readelf``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.image.libs import LIBDIR, kept_libraries, prune_libraries

HOST_LIBS = Path("/lib/x86_64-linux-gnu")

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils")


def test_kept_is_the_closure_of_what_programs_need() -> None:
    roots = {Path("usr/bin/ls"): {"libselinux.so.1", "libc.so.6"}}
    libs = {
        "libselinux.so.1": {"libpcre2-8.so.0", "libc.so.6"},
        "libpcre2-8.so.0": {"libc.so.6"},
        "libc.so.6": {"ld-linux-x86-64.so.2"},
        "libsqlite3.so.0": {"libc.so.6"},
    }
    assert kept_libraries(roots, libs) == {
        "libselinux.so.1", "libpcre2-8.so.0", "libc.so.6", "ld-linux-x86-64.so.2",
    }  # fmt: skip


def test_prune_keeps_linked_and_dlopened_libraries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    libdir = root / LIBDIR
    libdir.mkdir(parents=True)
    (root / "usr/bin").mkdir()
    shutil.copy2("/bin/ls", root / "usr/bin/ls")
    shutil.copy2("/bin/ls", root / "usr/bin/dpkg")  # a dropped program: its needs do not count
    for name in ("libselinux.so.1", "libpcre2-8.so.0", "libc.so.6", "libz.so.1", "libgcc_s.so.1"):
        shutil.copy2(HOST_LIBS / name, libdir / name)
    (libdir / "libz.so").symlink_to("libz.so.1")
    (libdir / "security").mkdir()  # PAM modules: nobody logs in to a node
    shutil.copy2(HOST_LIBS / "libz.so.1", libdir / "security/pam_x.so")

    removed = prune_libraries(root)

    assert removed == ["libz.so", "libz.so.1"]
    assert sorted(p.name for p in libdir.iterdir()) == [
        "libc.so.6", "libgcc_s.so.1", "libpcre2-8.so.0", "libselinux.so.1",
    ]  # fmt: skip
    assert not (root / "usr/bin/dpkg").exists() and (root / "usr/bin/ls").exists()
