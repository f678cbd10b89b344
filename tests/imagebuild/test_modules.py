"""Module load order from a fake ``lib/modules/<ver>`` tree: the kernel's own dependency data
(``modules.dep``, or each ``.ko``'s ``depends=``) decides the order, not a hand list."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.image.modules import (
    Driver,
    ModuleError,
    aliases_from_modinfo,
    depends_from_modinfo,
    driver_table,
    load_order,
    module_name,
    parse_modules_dep,
    read_builtin,
    read_index,
)

# A miniature of Debian 6.1's real dependencies (modinfo -F depends).
TREE = {
    "kernel/drivers/net/virtio_net.ko": ["virtio_ring", "virtio", "net_failover"],
    "kernel/drivers/net/net_failover.ko": ["failover"],
    "kernel/net/core/failover.ko": [],
    "kernel/drivers/virtio/virtio_ring.ko": ["virtio"],
    "kernel/drivers/virtio/virtio.ko": [],
    "kernel/drivers/nvme/host/nvme.ko": ["nvme-core"],
    "kernel/drivers/nvme/host/nvme-core.ko": [],
    "kernel/fs/ext4/ext4.ko": ["jbd2", "mbcache", "crc16"],
    "kernel/fs/jbd2/jbd2.ko": [],
    "kernel/fs/mbcache.ko": [],
    "kernel/lib/crc16.ko": [],
}


def _modules_dep(tree: dict[str, list[str]]) -> str:
    by_name = {module_name(p): p for p in tree}
    return "".join(f"{p}: {' '.join(by_name[module_name(d)] for d in deps)}\n"
                   for p, deps in tree.items())  # fmt: skip


ALIASES = {  # modinfo -F alias, trimmed
    "virtio_net": ["virtio:d00000001v*"],
    "nvme": ["pci:v*d*sv*sd*bc01sc08i02*", "pci:v0000144Dd0000A808sv*sd*bc*sc*i*"],
    "ext4": ["fs-ext4", "fs-ext3"],
}


def _ko(depends: list[str], aliases: tuple[str, ...] | list[str] = ()) -> bytes:
    """Bytes that look like a module's .modinfo section among other ELF bytes."""
    info = [b"license=GPL", *(b"alias=" + a.encode() for a in aliases),
            b"depends=" + ",".join(depends).encode(), b"vermagic=6.1.0 SMP"]  # fmt: skip
    return b"\x7fELF\x02\x01junk\x00" + b"\x00".join(info) + b"\x00more"


@pytest.fixture(params=["modules.dep", "depends="], ids=["modules-dep", "ko-depends"])
def moddir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    d = tmp_path / "lib/modules/6.1.0-test-amd64"
    for rel, deps in TREE.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(_ko(deps, ALIASES.get(module_name(rel), [])))
    if request.param == "modules.dep":
        (d / "modules.dep").write_text(_modules_dep(TREE))
    (d / "modules.builtin").write_text("kernel/lib/crc16.ko\nkernel/net/packet/af_packet.ko\n")
    return d


def _before(order: list[str], a: str, b: str) -> bool:
    names = [module_name(p) for p in order]
    return names.index(a) < names.index(b)


def test_dependencies_load_first_and_builtins_are_skipped(moddir: Path) -> None:
    order = load_order(
        ["virtio_net", "nvme", "ext4", "af_packet"],
        read_index(moddir),
        builtin=read_builtin(moddir),
    )
    assert [module_name(p) for p in order] == [
        "virtio", "virtio_ring", "failover", "net_failover", "virtio_net",
        "nvme_core", "nvme", "jbd2", "mbcache", "ext4",
    ]  # fmt: skip
    assert "kernel/drivers/nvme/host/nvme-core.ko" in order  # the file, with its dash
    for rel in order:
        assert (moddir / rel).is_file()
    assert _before(order, "virtio_ring", "virtio_net")


def test_each_module_once_even_when_shared(moddir: Path) -> None:
    order = load_order(["virtio_ring", "virtio_net", "virtio"], read_index(moddir))
    assert len(order) == len(set(order)) == 5


@pytest.mark.parametrize(
    ("dep", "want", "message"),
    [
        ("a: b\nb: a\n", ["a"], "module dependency cycle: a -> b -> a"),
        ("a: b\n", ["a"], "module b not found in the kernel's modules (b <- a)"),
        ("", ["virtio_net"], "module virtio_net not found"),
    ],
    ids=["cycle", "missing-dependency", "missing-module"],
)
def test_refusals(dep: str, want: list[str], message: str) -> None:
    with pytest.raises(ModuleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_order(want, parse_modules_dep(dep))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00depends=virtio,virtio_ring\x00", ("virtio", "virtio_ring")),
        (b"\x00depends=\x00", ()),
        (b"license=GPL\x00", ()),
        (b"depends=nvme-core\x00", ("nvme_core",)),
    ],
    ids=["two", "empty", "absent", "dash-normalised"],
)
def test_depends_from_modinfo(data: bytes, expected: tuple[str, ...]) -> None:
    assert depends_from_modinfo(data) == expected


def test_driver_table_chains_and_device_aliases(moddir: Path) -> None:
    table = driver_table(
        ["virtio_net", "nvme", "crc16"], read_index(moddir), moddir, builtin=read_builtin(moddir)
    )
    assert table == [
        Driver(
            "virtio_net",
            ("virtio:d00000001v*",),
            (
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
            ),
        ),
        Driver(
            "nvme",
            ("pci:v*d*sv*sd*bc01sc08i02*", "pci:v0000144Dd0000A808sv*sd*bc*sc*i*"),
            ("kernel/drivers/nvme/host/nvme-core.ko", "kernel/drivers/nvme/host/nvme.ko"),
        ),
    ]  # crc16 is built in: no entry; fmt: skip


def test_aliases_keep_device_buses_only() -> None:
    data = _ko([], ["fs-ext4", "pci:v00008086d*sv*sd*bc*sc*i*", "virtio:d00000001v*",
                    "pci:v00008086d*sv*sd*bc*sc*i*", "usb:v1234p*"])  # fmt: skip
    assert aliases_from_modinfo(data) == ("pci:v00008086d*sv*sd*bc*sc*i*", "virtio:d00000001v*")


def test_alias_unsafe_in_a_case_arm_is_refused() -> None:
    with pytest.raises(ModuleError, match="cannot match"):
        aliases_from_modinfo(_ko([], ["pci:v0000|$(reboot)*"]))
