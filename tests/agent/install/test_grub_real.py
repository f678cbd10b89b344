"""The env codec against grub-editenv, and grub.cfg's selection against choose_boot under a real
GRUB (grub-emu), with save_env writing to an ext4 image like STATE."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.install import grubenv
from agent.install.boot import Slot, choose_boot, render_grub_cfg, render_selection
from tests.support.install import CASE_IDS_EMU, CASES_EMU, need


def test_ours_read_by_grub_editenv(tmp_path: Path) -> None:
    need("grub-editenv")
    env = {"default_slot": "B", "try_slot": "A", "try_count": "2", "x": "a=b c"}
    (tmp_path / "env").write_bytes(grubenv.encode(env))
    out = subprocess.run(["grub-editenv", str(tmp_path / "env"), "list"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out == "".join(f"{k}={v}\n" for k, v in env.items())


def test_grub_editenv_read_by_ours(tmp_path: Path) -> None:
    need("grub-editenv")
    path = str(tmp_path / "env")
    subprocess.run(["grub-editenv", path, "create"], check=True)
    subprocess.run(["grub-editenv", path, "set", "default_slot=A", "try_slot=B", "try_count=3",
                    "odd=x\\y"], check=True)  # fmt: skip
    subprocess.run(["grub-editenv", path, "unset", "odd"], check=True)
    assert grubenv.decode(Path(path).read_bytes()) == {
        "default_slot": "A", "try_slot": "B", "try_count": "3"}  # fmt: skip


def test_selection_is_in_grub_cfg() -> None:
    assert render_selection() in render_grub_cfg()


@pytest.mark.parametrize(("env", "slot", "after"), CASES_EMU, ids=CASE_IDS_EMU)
def test_grub_emu_agrees_with_choose_boot(
    tmp_path: Path, env: dict[str, str], slot: str, after: dict[str, str]
) -> None:
    need("grub-emu", "mkfs.ext4")
    assert choose_boot(env) == (Slot(slot), after)
    disk = tmp_path / "state.img"
    with open(disk, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-O", "^inline_data", "-L", "STATE", str(disk)], check=True)
    # write the env block into the image without mounting: debugfs-free, via a mount
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(disk), str(mnt)], check=True)
    try:
        (mnt / "grubenv").write_bytes(grubenv.encode(env))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    grubdir = tmp_path / "grub"
    grubdir.mkdir()
    # The exact selection text from grub.cfg, then a probe that records the decision and halts.
    probe = 'set booted="${boot_slot}"\nsave_env --file "${envfile}" booted\nhalt\n'
    (grubdir / "grub.cfg").write_text(render_selection("(hd0)/grubenv") + "\n" + probe)
    (tmp_path / "device.map").write_text(f"(hd0) {disk}\n")
    subprocess.run(
        ["grub-emu", "-d", str(grubdir), "-r", "host", "-m", str(tmp_path / "device.map")],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    subprocess.run(["mount", "-o", "loop,ro", str(disk), str(mnt)], check=True)
    try:
        result = grubenv.decode((mnt / "grubenv").read_bytes())
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert result.pop("booted") == slot
    assert result == after
