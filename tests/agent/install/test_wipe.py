"""Deprovisioning's disk wipe on a real loop device (and the sandbox disk of simulated machines):
after a quick wipe no signature or partition table is left; a full wipe also erases the data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.install import PartLabel, install
from agent.install.block import BlockBackend
from agent.install.sandbox import install_sandbox
from agent.install.tools import InstallError
from agent.install.wipe import partitions, wipe_disk, wipe_sandbox
from tests.support.install import make_image


def signatures(dev: str) -> str:
    """What blkid still finds on the device itself (empty when nothing)."""
    r = subprocess.run(["blkid", "-p", "-o", "export", dev], capture_output=True, text=True)
    return r.stdout


def table(dev: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sfdisk", "--dump", dev], capture_output=True, text=True)


def test_quick_wipe_erases_every_signature_and_the_table(loop_disk: str, tmp_path: Path) -> None:
    install(loop_disk, *make_image(tmp_path / "v1", "v1"))
    parts = partitions(loop_disk)
    assert len(parts) == len(PartLabel) and "PTTYPE=gpt" in signatures(loop_disk)
    ext4 = BlockBackend(loop_disk).node(PartLabel.STATE)
    assert "TYPE=ext4" in signatures(ext4)
    assert wipe_disk(loop_disk, full=False) == 0
    assert signatures(loop_disk) == ""
    dump = table(loop_disk)
    assert dump.returncode != 0 and "does not contain a recognized partition table" in dump.stderr
    assert partitions(loop_disk) == []  # the kernel forgot them too


def test_full_wipe_erases_the_data(loop_disk: str, tmp_path: Path) -> None:
    install(loop_disk, *make_image(tmp_path / "v1", "v1"))
    seen: list[tuple[int, int]] = []
    erased = wipe_disk(loop_disk, full=True, progress=lambda d, t: seen.append((d, t)))
    size = int(subprocess.run(["blockdev", "--getsize64", loop_disk], capture_output=True,
                              text=True, check=True).stdout)  # fmt: skip
    assert erased == size and seen[-1] == (size, size)
    with open(loop_disk, "rb") as f:  # the protective MBR, GPT, slot A's blocks: all zeros
        for offset in (0, 512, 1024**2, 64 * 1024**2, 512 * 1024**2):
            f.seek(offset)
            assert f.read(4096) == bytes(4096), offset
    assert signatures(loop_disk) == ""


def test_wipe_refuses_what_it_must_not_touch(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="not a block device"):
        wipe_disk(str(tmp_path), full=False)


@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_sandbox_disk(tmp_path: Path, full: bool) -> None:
    files, manifest = make_image(tmp_path / "img", "v1")
    system = tmp_path / "root" / "system"
    install_sandbox(system, files, manifest)
    total = sum(p.stat().st_size for p in system.rglob("*") if p.is_file())
    assert wipe_sandbox(system, full=full) == (total if full else 0)
    assert not system.exists()
    assert wipe_sandbox(system, full=full) == 0  # again: nothing left, not an error
