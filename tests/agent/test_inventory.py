"""Inventory parsing of each fixture tree (modelled on real sysfs/procfs layouts)."""

from pathlib import Path

import pytest

from agent.inventory import collect, parse_cpuinfo, parse_ipmitool_lan, parse_meminfo

FIXTURES = Path(__file__).resolve().parents[2] / "agent" / "fixtures"


@pytest.mark.parametrize(
    ("tree", "vendor", "product", "sockets", "threads", "mem_gib", "disks", "nics", "bmc"),
    [
        pytest.param(
            "dell-r650",
            "Dell Inc.",
            "PowerEdge R650",
            2,
            16,
            251,
            {
                "nvme0n1": ("nvme", False),
                "nvme1n1": ("nvme", False),
                "sda": ("sata", False),
                "sdb": ("sata", False),
                "sdc": ("sata", True),
            },
            {
                "eno12399np0": ("i40e", 10000, True),
                "eno12409np1": ("i40e", 10000, True),
                "eno8303": ("tg3", 1000, True),
            },
            "10.10.0.21",
            id="dell",
        ),
        pytest.param(
            "supermicro-x12",
            "Supermicro",
            "SYS-120U-TNR",
            1,
            16,
            125,
            {"nvme0n1": ("nvme", False), "sda": ("sata", True), "sdb": ("sata", True)},
            {"enp81s0f0np0": ("mlx5_core", 25000, True), "enp81s0f1np1": ("mlx5_core", -1, False)},
            "10.10.0.33",
            id="supermicro",
        ),
        pytest.param(
            "qemu-vm",
            "QEMU",
            "Standard PC (Q35 + ICH9, 2009)",
            1,
            2,
            3,
            {"vda": ("virtio", True)},
            {"enp0s3": ("virtio_net", -1, True)},
            "",
            id="qemu",
        ),
    ],
)
def test_fixture_inventory(tree, vendor, product, sockets, threads, mem_gib, disks, nics, bmc):
    inv = collect(FIXTURES / tree)
    assert inv.smbios.vendor == vendor
    assert inv.smbios.product == product
    assert inv.smbios.uuid == inv.smbios.uuid.lower() and len(inv.smbios.uuid) == 36
    assert len(inv.cpus) == sockets
    assert sum(c.threads for c in inv.cpus) == threads
    assert inv.memory_bytes // 2**30 == mem_gib
    assert {d.name: (d.transport, d.rotational) for d in inv.disks} == disks
    assert {n.name: (n.driver, n.speed_mbps, n.link_up) for n in inv.nics} == nics
    assert inv.bmc_address == bmc


def test_dell_disk_details():
    inv = collect(FIXTURES / "dell-r650")
    d = {x.name: x for x in inv.disks}
    assert d["nvme0n1"].serial == "S61DNE0R701234"  # device/serial (NVMe)
    assert d["nvme0n1"].wwn.startswith("eui.")
    assert d["sda"].serial == "S47MNA0N501234"  # from the VPD page 0x80
    assert d["sda"].wwn == "naa.5002538e40a1b2c3"
    assert d["sdc"].size_bytes == 7_814_037_168 * 512
    assert "loop0" not in d
    n = {x.name: x for x in inv.nics}
    assert n["eno12409np1"].mtu == 9000 and n["eno12399np0"].mac == "b4:96:91:aa:bb:01"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "IP Address Source : DHCP\nIP Address              : 10.1.2.3\n", "10.1.2.3", id="set"
        ),
        pytest.param("IP Address              : 0.0.0.0\n", "", id="unset"),
        pytest.param("", "", id="empty"),
    ],
)
def test_ipmitool_lan(text, expected):
    assert parse_ipmitool_lan(text) == expected


def test_cpuinfo_without_physical_id_is_one_socket():
    text = "processor\t: 0\nmodel name\t: X\n\nprocessor\t: 1\nmodel name\t: X\n"
    (cpu,) = parse_cpuinfo(text)
    assert (cpu.socket, cpu.threads, cpu.cores) == (0, 2, 2)


def test_meminfo():
    assert parse_meminfo("MemTotal:  1024 kB\n") == 1024 * 1024
    assert parse_meminfo("") == 0


def test_missing_tree_gives_empty_inventory(tmp_path):
    inv = collect(tmp_path)
    assert inv.disks == () and inv.nics == () and inv.memory_bytes == 0
