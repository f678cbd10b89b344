"""The installer's tools in the image (``agent/image/tools.py``): the GRUB module closure, the
``udevadm`` stand-in against the real one, and the programs + libraries copied from a tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.image import tools
from tests.agent.install.conftest import loop_disk

__all__ = ["loop_disk"]  # the fixture, shared with the installer's suite

MODDEP = """normal: boot extcmd crypto terminal gettext bufio
linux: boot relocator mmap video
boot:
extcmd:
crypto:
terminal:
gettext:
bufio:
relocator: mmap
mmap:
video:
ext2: fshelp
fshelp:
unused: fshelp
"""


def test_module_closure_follows_moddep_and_skips_unknown_names() -> None:
    got = tools.module_closure(MODDEP, ["linux", "ext2", "no-such-module"])
    assert got == {"linux", "boot", "relocator", "mmap", "video", "ext2", "fshelp"}
    assert "unused" not in tools.module_closure(MODDEP, tools.GRUB_MODULES)


def test_module_closure_of_the_real_platforms_holds_what_the_installer_embeds() -> None:
    for platform in tools.GRUB_PLATFORMS:
        moddep = Path("/usr/lib/grub") / platform / "moddep.lst"
        if not moddep.exists():
            pytest.skip(f"{moddep} missing (grub-pc-bin / grub-efi-amd64-bin)")
        keep = tools.module_closure(moddep.read_text(), tools.GRUB_MODULES)
        from agent.install.installer import EFI_MODULES, GRUB_MODULES

        assert set(GRUB_MODULES.split()) <= keep
        if platform == "x86_64-efi":
            assert set(EFI_MODULES.split()) <= keep
        assert {"normal", "linux", "loadenv", "search", "configfile"} <= keep


@pytest.mark.skipif(shutil.which("udevadm") is None, reason="udevadm missing")
def test_udevadm_standin_answers_what_udevadm_answers(loop_disk: str, tmp_path: Path) -> None:
    subprocess.run(["sfdisk", "-q", loop_disk], input="label: gpt\n,100M\n,100M\n", text=True,
                   check=True)  # fmt: skip
    subprocess.run(["partx", "--update", loop_disk], check=False)
    shim = tmp_path / "udevadm"
    shim.write_text(tools.UDEVADM.replace("#!/bin/busybox sh", "#!/bin/sh"))
    shim.chmod(0o755)
    for dev in (f"{loop_disk}p2", loop_disk):
        argv = ["info", "--query", "path", "--name", dev]
        real = subprocess.run(["udevadm", *argv], capture_output=True, text=True, check=True)
        ours = subprocess.run([str(shim), *argv], capture_output=True, text=True, check=True)
        assert ours.stdout == real.stdout and ours.stdout.startswith("/devices/"), (dev, ours)
    bad = subprocess.run([str(shim), "info", "--query", "path", "--name", "/dev/nope0"])
    assert bad.returncode != 0


def test_add_programs_copies_symlinks_and_missing_libraries(tmp_path: Path) -> None:
    """A tree laid out like unpacked packages: a program (a symlink to the real file, as
    mkfs.vfat -> mkfs.fat) needing a library the root lacks and one the root has."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf missing (binutils)")
    tree, root = tmp_path / "tree", tmp_path / "root"
    real = Path(shutil.which("mcopy") or "/usr/bin/mtools").resolve()
    lib = next(Path("/").glob("usr/lib/x86_64-linux-gnu/libc.so.6"))
    (tree / "usr/bin").mkdir(parents=True)
    shutil.copy2(real, tree / "usr/bin/mtools")
    (tree / "usr/bin/mcopy").symlink_to("mtools")
    (tree / "lib/x86_64-linux-gnu").mkdir(parents=True)
    shutil.copy2(lib, tree / "lib/x86_64-linux-gnu/libc.so.6")
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").touch()  # the root has the loader
    added = tools.add_programs(tree, root, ["usr/bin/mcopy"])
    assert (root / "usr/bin/mcopy").is_symlink() and (root / "usr/bin/mtools").is_file()
    assert "lib/x86_64-linux-gnu/libc.so.6" in added  # the root lacked it
    (root / "usr/bin/mcopy").unlink()
    (root / "usr/bin/mtools").unlink()
    assert tools.add_programs(tree, root, ["usr/bin/mcopy"]) == ["usr/bin/mcopy"]  # now it has it
    with pytest.raises(Exception, match="not in the tool packages"):
        tools.add_programs(tree, root, ["usr/sbin/nothing"])


def test_prune_keeps_the_code_page_mtools_needs(tmp_path: Path) -> None:
    from agent.image import debian

    gconv = tmp_path / "usr/lib/x86_64-linux-gnu/gconv"
    (gconv / "gconv-modules.d").mkdir(parents=True)
    for name in ("IBM850.so", "BIG5.so", "gconv-modules", "gconv-modules.cache"):
        (gconv / name).write_text("x")
    (tmp_path / "usr/share/doc/x").mkdir(parents=True)
    debian.prune(tmp_path)
    assert sorted(p.name for p in gconv.iterdir()) == ["IBM850.so"]
    assert not (tmp_path / "usr/share/doc").exists()
    gconv_modules = tools.GCONV_MODULES.splitlines()
    assert "alias\tCP850//\tIBM850//" in gconv_modules  # what mtools asks iconv for
