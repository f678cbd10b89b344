"""A real initramfs from a small fixture root: GNU cpio + zstd/xz, listed back with
``cpio -t``; the same tree packs to the same bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.image.cpio import Compression, list_members, pack


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "etc/bronze").mkdir(parents=True)
    (root / "lib/modules/6.1.0/kernel").mkdir(parents=True)
    (root / "init").write_text("#!/bin/busybox sh\necho bronze init\n")
    (root / "init").chmod(0o755)
    (root / "etc/bronze/ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (root / "lib/modules/6.1.0/kernel/virtio.ko").write_bytes(b"\x7fELF" + bytes(4096))
    os.symlink("busybox", root / "bin/sh")
    (root / "bin/busybox").write_bytes(b"\x7fELF")
    return root


@pytest.mark.parametrize("compression", list(Compression), ids=[c.value for c in Compression])
def test_pack_and_list(tmp_path: Path, compression: Compression) -> None:
    out = tmp_path / "initrd.img"
    pack(_root(tmp_path), out, compression)
    assert out.read_bytes()[:4] == (
        b"\x28\xb5\x2f\xfd" if compression is Compression.ZSTD else b"\xfd7zX"
    )
    assert list_members(out, compression) == [
        "bin", "bin/busybox", "bin/sh", "etc", "etc/bronze", "etc/bronze/ca.pem", "init",
        "lib", "lib/modules", "lib/modules/6.1.0", "lib/modules/6.1.0/kernel",
        "lib/modules/6.1.0/kernel/virtio.ko",
    ]  # fmt: skip


def test_same_tree_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    pack(_root(tmp_path / "one"), a)
    pack(_root(tmp_path / "two"), b)  # other inode numbers, other mtimes
    assert a.read_bytes() == b.read_bytes()
