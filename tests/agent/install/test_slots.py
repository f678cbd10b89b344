"""SlotStore over both backends (directory sandbox, real loop disk after a real install)."""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from agent.install import grubenv
from agent.install.block import BlockBackend
from agent.install.boot import Slot
from agent.install.installer import install
from agent.install.layout import PartLabel
from agent.install.sandbox import install_sandbox
from agent.install.slots import SlotBackend, SlotError, SlotStore, grub_boot, read_env
from agent.install.tools import InstallError, mounted
from tests.support.install import make_image


@pytest.fixture(params=["sandbox", "block"])
def machine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SlotBackend]:
    files, manifest = make_image(tmp_path / "v1", "v1")
    ident = tmp_path / "ident"
    ident.mkdir()
    (ident / "key.pem").write_bytes(b"KEY")
    if request.param == "sandbox":
        yield install_sandbox(tmp_path / "root", files, manifest, identity_dir=ident)
        return
    disk: str = request.getfixturevalue("loop_disk")
    install(disk, files, manifest, identity_dir=ident)
    yield BlockBackend(disk)


def _sentinel(backend: SlotBackend, data: bytes | None = None) -> bytes | None:
    if hasattr(backend, "path"):
        eph = backend.path(PartLabel.EPHEMERAL)  # type: ignore[attr-defined]
        if data is not None:
            (eph / "sentinel").write_bytes(data)
        p = eph / "sentinel"
        return p.read_bytes() if p.exists() else None
    assert isinstance(backend, BlockBackend)
    with mounted(backend.node(PartLabel.EPHEMERAL)) as eph:
        if data is not None:
            (eph / "sentinel").write_bytes(data)
        p = eph / "sentinel"
        return p.read_bytes() if p.exists() else None


def _digest(backend: SlotBackend, what: str) -> str:
    """sha256 of a slot's partition (block) or tree (sandbox); STATE without grubenv."""
    h = hashlib.sha256()
    if isinstance(backend, BlockBackend) and what != "STATE":
        with open(backend.node(PartLabel(what)), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    ctx = backend.state_dir() if what == "STATE" else backend.slot_dir(Slot(what[-1]))
    with ctx as root:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "grubenv" and "lost+found" not in p.parts:
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_upgrade_writes_only_inactive_then_confirms(machine: SlotBackend, tmp_path: Path) -> None:
    store = SlotStore(machine, grub_boot(machine))
    assert store.active() is Slot.A and store.status().booted_version == "v1"
    before = (_digest(machine, "BOOT-A"), _digest(machine, "STATE"))
    files, manifest = make_image(tmp_path / "v2", "v2")
    written = store.write_inactive(files, manifest)
    assert written.sha256["vmlinuz"] == hashlib.sha256(files["vmlinuz"].read_bytes()).hexdigest()
    assert (_digest(machine, "BOOT-A"), _digest(machine, "STATE")) == before
    assert read_env(machine) == {"default_slot": "A"}  # not armed by a write
    store.arm_try(Slot.B, tries=2, preserve=True)
    assert read_env(machine) == {"default_slot": "A", "try_slot": "B", "try_count": "2"}
    new = SlotStore(machine, grub_boot(machine))  # reboot: GRUB tries B
    assert new.active() is Slot.B and new.status().try_count == 1
    assert new.wipe_ephemeral_if_requested() is False
    assert new.confirm_good() is True
    st = new.status()
    assert (st.last_good, st.try_slot, st.booted_version, st.upgrade) == (Slot.B, None, "v2", None)
    assert SlotStore(machine, grub_boot(machine)).active() is Slot.B


def test_unconfirmed_slot_falls_back(machine: SlotBackend, tmp_path: Path) -> None:
    store = SlotStore(machine, grub_boot(machine))
    store.write_inactive(*make_image(tmp_path / "v2", "v2"))
    store.arm_try(Slot.B, tries=1)
    assert grub_boot(machine) is Slot.B  # the one try, never confirmed (it hung)
    assert grub_boot(machine) is Slot.A
    back = SlotStore(machine, Slot.A)
    assert back.status().rolled_back and back.status().try_slot is None


def test_failed_write_leaves_machine_as_it_was(machine: SlotBackend, tmp_path: Path) -> None:
    store = SlotStore(machine, grub_boot(machine))
    files, manifest = make_image(tmp_path / "v2", "v2")

    class Broken(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() >= 100_000:
                raise OSError("image source vanished halfway")
            return super().read(min(n or 50_000, 50_000))

    def broken() -> BinaryIO:
        return Broken(files["initrd.img"].read_bytes())

    before = (_digest(machine, "BOOT-A"), _digest(machine, "STATE"))
    with pytest.raises(OSError, match="halfway"):
        store.write_inactive({"vmlinuz": files["vmlinuz"], "initrd.img": broken}, manifest)
    assert (_digest(machine, "BOOT-A"), _digest(machine, "STATE")) == before
    assert read_env(machine) == {"default_slot": "A"}
    with pytest.raises(SlotError, match="holds no complete image"):
        store.arm_try(Slot.B)
    assert grub_boot(machine) is Slot.A


@pytest.mark.parametrize("preserve", [True, False], ids=["preserve", "wipe"])
def test_ephemeral_preserve(machine: SlotBackend, tmp_path: Path, preserve: bool) -> None:
    store = SlotStore(machine, grub_boot(machine))
    _sentinel(machine, b"precious\x00data")
    store.write_inactive(*make_image(tmp_path / "v2", "v2"))
    store.arm_try(Slot.B, tries=2, preserve=preserve)
    assert _sentinel(machine) == b"precious\x00data"  # never before the new slot boots
    old = SlotStore(machine, Slot.A)  # e.g. the agent restarts before the reboot
    assert old.wipe_ephemeral_if_requested() is False
    assert old.confirm_good() is False and old.status().try_slot is Slot.B  # still armed
    new = SlotStore(machine, grub_boot(machine))
    assert new.active() is Slot.B
    if not preserve:
        with pytest.raises(SlotError, match="wipe requested"):
            new.confirm_good()
    assert new.wipe_ephemeral_if_requested() is (not preserve)
    assert new.wipe_ephemeral_if_requested() is False  # once
    assert _sentinel(machine) == (b"precious\x00data" if preserve else None)
    assert new.confirm_good() is True


def test_write_refused_while_running_unconfirmed(machine: SlotBackend, tmp_path: Path) -> None:
    store = SlotStore(machine, grub_boot(machine))
    store.write_inactive(*make_image(tmp_path / "v2", "v2"))
    store.arm_try(Slot.B)
    running_b = SlotStore(machine, grub_boot(machine))
    with pytest.raises(SlotError, match="not confirmed good"):
        running_b.write_inactive(*make_image(tmp_path / "v3", "v3"))


def test_identity_in_state(machine: SlotBackend) -> None:
    with machine.state_dir() as state:
        assert (state / "agent" / "key.pem").read_bytes() == b"KEY"
        assert grubenv.decode((state / "grub" / "grubenv").read_bytes()) == {"default_slot": "A"}


def test_installer_on_loop_disk(loop_disk: str, tmp_path: Path) -> None:
    install(loop_disk, *make_image(tmp_path / "v1", "v1"))
    dump = subprocess.run(["sfdisk", "--dump", loop_disk], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    for label in PartLabel:
        assert f'name="{label.value}"' in dump
    backend = BlockBackend(loop_disk)
    blkid = subprocess.run(["blkid", "-o", "export", backend.node(PartLabel.EFI)],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "TYPE=vfat" in blkid and "PARTLABEL=EFI" in blkid
    for label in (PartLabel.BOOT_A, PartLabel.STATE, PartLabel.EPHEMERAL):
        out = subprocess.run(["blkid", "-o", "export", backend.node(label)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "TYPE=ext4" in out and f"LABEL={label.value}" in out
    with open(backend.node(PartLabel.BIOS), "rb") as f:
        core = f.read(512)
    with open("/usr/lib/grub/i386-pc/diskboot.img", "rb") as f:
        assert core[:16] == f.read(16)  # core.img starts with diskboot.img
    with open(loop_disk, "rb") as f:
        assert f.read(512)[510:] == b"\x55\xaa"
    mdir = subprocess.run(["mdir", "-i", backend.node(PartLabel.EFI), "::/EFI/BOOT"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "BOOTX64" in mdir
    with mounted(backend.node(PartLabel.STATE)) as state:
        env = subprocess.run(["grub-editenv", str(state / "grub/grubenv"), "list"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert env == "default_slot=A\n"
        assert (state / "grub/grub.cfg").exists() and (state / "grub/i386-pc").is_dir()


def test_install_refuses_non_block_device(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="not a block device"):
        install(str(tmp_path), {}, make_image(tmp_path / "v", "v")[1])
