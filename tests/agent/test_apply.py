"""Config application on a sandbox root: idempotent, contained, with try/staged state."""

import json
import os

import pytest

import agent.apply
from agent.apply import ApplyError, ConfigApplier, reboot_needed, render_files
from agent.identity import write_file

CFG = {
    "hostname": "n1",
    "files": {"/etc/motd": {"content": "hello\n", "mode": 0o600}},
    "sysctls": {"vm.swappiness": "5"},
    "network": {
        "links": {"eth0": {"mtu": 9000, "addresses": ["10.0.0.5/24"]}},
        "routes": [{"to": "default", "via": "10.0.0.1", "link": "eth0"}],
        "dns": {"nameservers": ["10.0.0.53"]},
    },
    "time": {"servers": ["ntp1"]},
}


@pytest.fixture
def applier(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return ConfigApplier(root, root / "var/lib/bronze", fsync=False)


def test_apply_writes_files_and_is_idempotent(applier):
    root = applier.root
    applier.apply_live("v1", CFG, "auto")
    assert (root / "etc/hostname").read_text() == "n1\n"
    assert oct((root / "etc/motd").stat().st_mode & 0o777) == oct(0o600)
    assert (root / "proc/sys/vm/swappiness").read_text() == "5\n"
    net = (root / "etc/systemd/network/50-bronze-eth0.network").read_text()
    assert "MTUBytes=9000" in net and "Gateway=10.0.0.1" in net
    assert (root / "etc/resolv.conf").read_text() == "nameserver 10.0.0.53\n"
    inode = (root / "etc/motd").stat().st_ino
    applier.apply_live("v1", CFG, "auto")
    assert (root / "etc/motd").stat().st_ino == inode  # unchanged file not rewritten
    assert applier.current_version == "v1"


def test_files_dropped_from_config_are_removed(applier):
    applier.apply_live("v1", CFG, "auto")
    smaller = {k: v for k, v in CFG.items() if k != "files"}
    applier.apply_live("v2", smaller, "auto")
    assert not (applier.root / "etc/motd").exists()
    assert (applier.root / "etc/hostname").exists()


def test_symlinked_parent_escaping_root_is_refused(applier, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (applier.root / "etc").mkdir()
    os.symlink(outside, applier.root / "etc/evil")
    with pytest.raises(ApplyError):
        applier.apply_live("v1", {"files": {"/etc/evil/x": {"content": "x"}}}, "auto")
    assert not (outside / "x").exists()


def test_try_then_revert_and_staged_on_boot(applier):
    applier.apply_live("v1", CFG, "auto")
    applier.begin_try("v2", {**CFG, "hostname": "n2"}, 60, previous=applier.current)
    assert (applier.root / "etc/hostname").read_text() == "n2\n"
    assert applier.revert_try() == "v1"
    assert (applier.root / "etc/hostname").read_text() == "n1\n"
    applier.stage("v3", {**CFG, "kernel_args": ["quiet"]})
    assert applier.current_version == "v1" and applier.staged_version == "v3"
    applier.on_boot()
    assert applier.current_version == "v3" and applier.staged_version == ""
    assert (applier.root / "var/lib/bronze/boot/kernel-args").read_text() == "quiet\n"


class PowerCut(BaseException):
    """The agent dies mid-apply (no ``except Exception`` runs, as under SIGKILL)."""


def test_try_cut_off_halfway_is_reverted_at_next_start(applier, monkeypatch):
    applier.apply_live("v1", CFG, "auto")
    trial = {**CFG, "hostname": "n2", "files": {"/etc/motd": {"content": "bye\n"}}}
    real_write = agent.apply.write_file

    def cut_at_motd(path, *args, **kwargs):
        if path.name == "motd":
            raise PowerCut
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(agent.apply, "write_file", cut_at_motd)
    with pytest.raises(PowerCut):
        applier.begin_try("v2", trial, 60, previous=applier.current)
    monkeypatch.undo()
    assert (applier.root / "etc/hostname").read_text() == "n2\n"  # partly applied
    assert applier.trial["version"] == "v2"  # but the revert plan was saved first
    applier.on_boot()
    assert (applier.root / "etc/hostname").read_text() == "n1\n"
    assert applier.current_version == "v1" and applier.trial is None


def test_reboot_needed():
    assert reboot_needed(CFG, {**CFG, "hostname": "x"}) == []
    assert reboot_needed(CFG, {**CFG, "kernel_args": ["a"]}) == ["kernel_args"]
    assert reboot_needed(None, {"install": {"disk": "/dev/sda"}}) == ["install"]


def test_render_files_routes_without_link():
    files = render_files(
        {"network": {"routes": [{"to": "10.9.0.0/16", "via": "10.0.0.1"}]}}, "/var/lib/bronze"
    )
    assert files["/etc/bronze/routes"].data == b"10.9.0.0/16 via 10.0.0.1 metric 1024\n"
    json.dumps({k: v.mode for k, v in files.items()})


def test_a_sysctl_that_exists_is_written_in_place(applier):
    """procfs takes no temp file + rename: an existing /proc/sys entry is written in place (the
    lab's real kernel refused `.nr_hugepages.tmp`): same inode, no file beside it."""
    sysdir = applier.root / "proc/sys/vm"
    sysdir.mkdir(parents=True)
    (sysdir / "swappiness").write_text("60\n")
    inode = (sysdir / "swappiness").stat().st_ino
    applier.apply_live("v1", {"sysctls": {"vm.swappiness": "5"}}, "auto")
    assert (sysdir / "swappiness").read_text() == "5\n"
    assert (sysdir / "swappiness").stat().st_ino == inode
    assert sorted(p.name for p in sysdir.iterdir()) == ["swappiness"]


def test_a_sysctl_the_kernel_does_not_take_fails_the_apply(applier):
    """A kernel that holds another value after the write (nr_hugepages gets only the pages it
    can find; a value clamped) is an apply error naming both values, and the config is not
    recorded as applied. /dev/null plays such an entry: it takes the write and reads back empty."""
    sysdir = applier.root / "proc/sys/vm"
    sysdir.mkdir(parents=True)
    (sysdir / "nr_hugepages").symlink_to("/dev/null")
    with pytest.raises(ApplyError, match=r"nr_hugepages: the kernel holds '' after writing '64'"):
        applier.apply_live("v1", {"sysctls": {"vm.nr_hugepages": "64"}}, "auto")
    assert not (applier.state / "config.json").exists()


def test_a_sysctl_read_back_ignores_the_kernels_spacing(applier):
    """The kernel prints multi-value sysctls with tabs: "1024 65000" reads back "1024\\t65000"."""
    sysdir = applier.root / "proc/sys/net/ipv4"
    sysdir.mkdir(parents=True)
    (sysdir / "ip_local_port_range").write_text("1024\t65000\n")
    applier.apply_live("v1", {"sysctls": {"net.ipv4.ip_local_port_range": "1024 65000"}}, "auto")
    assert (sysdir / "ip_local_port_range").read_text() == "1024\t65000\n"  # nothing to write


def test_symlinked_parent_inside_root_is_followed(applier):
    """A link on the way that stays inside the root is fine (the general path: realpath)."""
    (applier.root / "etc/real").mkdir(parents=True)
    os.symlink(applier.root / "etc/real", applier.root / "etc/link")
    applier.apply_live("v1", {"files": {"/etc/link/x": {"content": "x"}}}, "auto")
    assert (applier.root / "etc/real/x").read_text() == "x"


def test_missing_parents_are_made_and_a_file_in_the_way_fails(applier):
    applier.apply_live("v1", {"files": {"/opt/a/b/c": {"content": "c", "mode": 0o640}}}, "auto")
    assert (applier.root / "opt/a/b/c").read_text() == "c"
    assert oct((applier.root / "opt/a/b/c").stat().st_mode & 0o777) == oct(0o640)
    with pytest.raises(OSError):
        applier.apply_live("v2", {"files": {"/opt/a/b/c/d": {"content": "d"}}}, "auto")


def test_write_file_mode_survives_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_file(tmp_path / "new/dir/f", b"x", 0o644, fsync=False)
    finally:
        os.umask(old)
    assert oct((tmp_path / "new/dir/f").stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in (tmp_path / "new/dir").iterdir()) == ["f"]  # no temp file left


def test_an_apply_that_fails_half_way_puts_back_what_it_wrote(applier, tmp_path):
    """All or nothing: the files written before the failing one get their old content and mode
    back, the ones it created are removed, and the config in effect is still the old one."""
    root = applier.root
    applier.apply_live("v1", CFG, "auto")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "etc/zz").mkdir()
    os.symlink(outside, root / "etc/zz/evil")
    v2 = {
        **CFG,
        "hostname": "n2",
        "files": {
            "/etc/a-new": {"content": "new\n"},
            "/etc/motd": {"content": "changed\n", "mode": 0o644},
            "/etc/zz/evil/x": {"content": "x"},
        },
    }
    with pytest.raises(ApplyError, match="outside the root"):
        applier.apply_live("v2", v2, "auto")
    assert (root / "etc/hostname").read_text() == "n1\n"
    assert not (root / "etc/a-new").exists()
    assert (root / "etc/motd").read_text() == "hello\n"
    assert oct((root / "etc/motd").stat().st_mode & 0o777) == oct(0o600)
    assert not (outside / "x").exists()
    assert applier.current_version == "v1"
    applier.apply_live("v1", CFG, "auto")  # the old config is whole: nothing left to change
    assert (root / "etc/hostname").read_text() == "n1\n"


def test_a_sysctl_refused_half_way_puts_back_the_live_values(applier):
    """A live value written before the sysctl the kernel refuses is written back too, as is the
    sysctl.d file."""
    sysdir = applier.root / "proc/sys/vm"
    sysdir.mkdir(parents=True)
    (sysdir / "swappiness").write_text("60\n")
    (sysdir / "nr_hugepages").symlink_to("/dev/null")
    with pytest.raises(ApplyError, match="nr_hugepages"):
        applier.apply_live(
            "v1", {"sysctls": {"vm.swappiness": "5", "vm.nr_hugepages": "64"}}, "auto"
        )
    assert (sysdir / "swappiness").read_text() == "60\n"
    assert not (applier.root / "etc/sysctl.d/90-bronze.conf").exists()
    assert (sysdir / "nr_hugepages").is_symlink()
    assert not (applier.state / "config.json").exists()
