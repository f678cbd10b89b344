"""An installed machine finds its own disk: ``NodeSlots.detect`` on a real root (``/``) with
``bronze.slot=`` and STATE mounted, ``disk_of_mount`` over a loop disk's partition, and the
endpoints the agent keeps in its state dir for boots without ``bronze.server=``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.identity import load_endpoints, save_endpoints
from agent.install.block import BlockBackend
from agent.install.installer import install
from agent.install.layout import PartLabel
from agent.install.tools import mountpoint_of
from agent.main import _parser, run_options
from agent.upgrade import disk_of_mount
from tests.support.install import make_image


def test_disk_of_mount_names_the_whole_disk_of_a_mounted_partition(
    loop_disk: str, tmp_path: Path
) -> None:
    subprocess.run(["sfdisk", "-q", loop_disk], input="label: gpt\n,64M\n,64M\n", text=True,
                   check=True)  # fmt: skip
    subprocess.run(["partx", "--update", loop_disk], check=False)
    part = f"{loop_disk}p2"
    subprocess.run(["mkfs.ext4", "-q", "-F", part], check=True)
    where = tmp_path / "state"
    where.mkdir()
    assert disk_of_mount(where) is None  # nothing mounted there
    subprocess.run(["mount", part, str(where)], check=True)
    try:
        assert disk_of_mount(where) == loop_disk
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_disk_of_mount_ignores_filesystems_that_are_not_partitions(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("tmpfs /system/state tmpfs rw 0 0\n/dev/loop99 /x ext4 rw 0 0\n")
    assert disk_of_mount(Path("/system/state"), str(mounts)) is None
    assert disk_of_mount(Path("/x"), str(mounts)) is None  # no such partition in sysfs


def test_an_installed_boot_without_bronze_server_runs_with_the_saved_endpoints(
    tmp_path: Path,
) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "proc").mkdir(parents=True)
    (root / "proc/cmdline").write_text("console=ttyS0 bronze.slot=A\n")
    args = _parser().parse_args(["run", "--root", str(root), "--state", str(state)])
    assert run_options(args) == 2  # nothing saved: no server, said so
    save_endpoints(state, server="10.0.0.1:7444", enroll="10.0.0.1:7443", machine="m-1",
                   fsync=False)  # fmt: skip
    opts = run_options(args)
    assert not isinstance(opts, int)
    assert (opts.server, opts.enroll, opts.machine_id) == ("10.0.0.1:7444", "10.0.0.1:7443", "m-1")
    # the kernel command line still wins (a netboot names the server it was served by)
    (root / "proc/cmdline").write_text("bronze.server=10.0.0.2:7444 bronze.machine=m-2\n")
    opts = run_options(args)
    assert not isinstance(opts, int)
    assert (opts.server, opts.enroll, opts.machine_id) == ("10.0.0.2:7444", "10.0.0.2:7443", "m-2")


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"server": 5}'])
def test_unreadable_endpoints_are_none(tmp_path: Path, text: str) -> None:
    (tmp_path / "endpoints.json").write_text(text)
    assert load_endpoints(tmp_path) == {}


def test_wipe_ephemeral_of_a_mounted_var_remounts_a_fresh_filesystem(
    loop_disk: str, tmp_path: Path
) -> None:
    """The OS image mounts EPHEMERAL at /var before the agent runs; a preserve=false upgrade's
    wipe unmounts it, makes it anew and mounts it back in the same place."""
    files, manifest = make_image(tmp_path / "img", "v1")
    install(loop_disk, files, manifest)
    backend = BlockBackend(loop_disk)
    node = backend.node(PartLabel.EPHEMERAL)
    var = tmp_path / "var"
    var.mkdir()
    subprocess.run(["mount", node, str(var)], check=True)
    try:
        (var / "sentinel").write_text("old")
        backend.wipe_ephemeral()
        assert mountpoint_of(node) == str(var)
        assert not (var / "sentinel").exists()
        assert sorted(p.name for p in var.iterdir()) == ["lost+found"]
    finally:
        subprocess.run(["umount", str(var)], check=False)
