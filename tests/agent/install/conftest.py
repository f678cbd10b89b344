"""Fixtures for the installer suite: a sparse-file loop disk (always detached)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.install import TOOLS, need


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[str]:
    need(*TOOLS)
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(2 * 1024**3)
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(img)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
