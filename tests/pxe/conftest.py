"""Fixtures for the boot plane tests: an event loop thread, DHCP client helpers, a TFTP root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.netlab import LoopThread
from tests.support.pxe import Client


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client()
    yield c
    c.close()


@pytest.fixture
def tftp_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.bin").write_bytes(os.urandom(3000))
    (root / "exact.bin").write_bytes(os.urandom(1024))  # a multiple of 512: empty final block
    (root / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 7))
    (root / "empty.bin").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "inner.bin").write_bytes(b"inner")
    (tmp_path / "secret").write_text("SECRET-CONTENT")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "escape_dir").symlink_to(tmp_path)
    (root / "inside_link").symlink_to(root / "small.bin")
    return root
