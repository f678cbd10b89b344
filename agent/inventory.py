"""Hardware inventory read from the kernel's pseudo-filesystems, relative to a root directory.

Sources (all plain files, so a fixture tree under ``agent/fixtures/`` reproduces a machine):

* SMBIOS/DMI — ``/sys/class/dmi/id/{product_uuid,product_serial,sys_vendor,product_name,
  board_vendor,board_name,bios_version}`` (the kernel's copy of the SMBIOS System and Baseboard
  Information structures, DMTF DSP0134 types 1 and 2);
* CPUs — ``/proc/cpuinfo``, grouped by ``physical id`` (one entry per socket);
* memory — ``MemTotal`` in ``/proc/meminfo``;
* disks — ``/sys/block/*``: ``size`` (always 512-byte sectors), ``queue/rotational``,
  ``device/model``, ``device/serial`` (NVMe) or ``device/vpd_pg80`` (SCSI/SATA unit serial
  number VPD page), ``wwid``/``device/wwid``; the transport from the device path (``nvme``,
  ``ata``, ``virtio``) — virtual devices (loop, ram, zram, dm, md, sr, nbd) are skipped;
* NICs — ``/sys/class/net/*`` that have a ``device`` link (physical functions): ``address``,
  ``operstate``, ``speed`` (reads fail with EINVAL on a down link: -1), ``mtu``, and the driver
  name from the ``device/driver`` link;
* BMC — the output of ``ipmitool lan print`` saved at ``/run/bronze/ipmi-lan.txt`` by the boot
  image (the agent does not shell out); absent on machines without a BMC (VMs).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_SKIP_BLOCK = ("loop", "ram", "zram", "dm-", "md", "sr", "nbd", "fd")


@dataclass(frozen=True)
class Smbios:
    uuid: str = ""
    serial: str = ""
    vendor: str = ""
    product: str = ""
    board_vendor: str = ""
    board_product: str = ""
    bios_version: str = ""


@dataclass(frozen=True)
class Cpu:
    socket: int
    model: str
    cores: int
    threads: int
    mhz: float


@dataclass(frozen=True)
class Disk:
    name: str
    size_bytes: int
    model: str
    serial: str
    rotational: bool
    wwn: str
    transport: str


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    driver: str
    speed_mbps: int
    link_up: bool
    mtu: int


@dataclass(frozen=True)
class Inventory:
    smbios: Smbios = field(default_factory=Smbios)
    cpus: tuple[Cpu, ...] = ()
    memory_bytes: int = 0
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    bmc_address: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:  # missing, EINVAL (speed of a down link), EACCES (serial as non-root)
        return default


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def read_smbios(root: Path) -> Smbios:
    d = _under(root, "/sys/class/dmi/id")
    return Smbios(
        uuid=_read(d / "product_uuid").lower(),
        serial=_read(d / "product_serial"),
        vendor=_read(d / "sys_vendor"),
        product=_read(d / "product_name"),
        board_vendor=_read(d / "board_vendor"),
        board_product=_read(d / "board_name"),
        bios_version=_read(d / "bios_version"),
    )


def parse_cpuinfo(text: str) -> tuple[Cpu, ...]:
    sockets: dict[int, dict[str, Any]] = {}
    for block in text.strip().split("\n\n"):
        kv: dict[str, str] = {}
        for line in block.splitlines():
            if ":" in line:
                k, _, v = line.partition(":")
                kv[k.strip()] = v.strip()
        if "processor" not in kv:
            continue
        sock = int(kv.get("physical id", "0") or 0)
        s = sockets.setdefault(
            sock,
            {"model": kv.get("model name", ""), "cores": 0, "threads": 0, "mhz": 0.0},
        )
        s["threads"] += 1
        s["cores"] = int(kv.get("cpu cores", "0") or 0) or s["threads"]
        s["mhz"] = max(s["mhz"], float(kv.get("cpu MHz", "0") or 0))
    return tuple(
        Cpu(sock, v["model"], v["cores"], v["threads"], v["mhz"])
        for sock, v in sorted(sockets.items())
    )


def parse_meminfo(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * 1024  # the kernel's "kB" is KiB
    return 0


def _vpd_serial(raw: bytes) -> str:
    # SPC-4 Unit Serial Number VPD page: 4-byte header, then the ASCII serial number.
    return raw[4:].decode("ascii", "replace").strip(" \x00") if len(raw) > 4 else ""


def read_disks(root: Path) -> tuple[Disk, ...]:
    base = _under(root, "/sys/block")
    out = []
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        name = entry.name
        if name.startswith(_SKIP_BLOCK):
            continue
        dev = entry / "device"
        serial = _read(dev / "serial")
        if not serial:
            try:
                serial = _vpd_serial((dev / "vpd_pg80").read_bytes())
            except OSError:
                serial = ""
        link = os.readlink(entry) if entry.is_symlink() else ""
        if name.startswith("nvme"):
            transport = "nvme"
        elif name.startswith("vd") or "/virtio" in link:
            transport = "virtio"
        elif "/ata" in link:
            transport = "sata"
        else:
            transport = "scsi"
        out.append(
            Disk(
                name=name,
                size_bytes=int(_read(entry / "size", "0") or 0) * 512,
                model=_read(dev / "model"),
                serial=serial,
                rotational=_read(entry / "queue/rotational", "0") == "1",
                wwn=_read(entry / "wwid") or _read(dev / "wwid"),
                transport=transport,
            )
        )
    return tuple(out)


def read_nics(root: Path) -> tuple[Nic, ...]:
    base = _under(root, "/sys/class/net")
    out = []
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        dev = entry / "device"
        if not dev.exists():
            continue  # lo, bridges, bonds, VLANs: no backing device
        driver_link = dev / "driver"
        driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else ""
        speed = int(_read(entry / "speed", "-1") or -1)
        out.append(
            Nic(
                name=entry.name,
                mac=_read(entry / "address").lower(),
                driver=driver,
                speed_mbps=speed if speed > 0 else -1,
                link_up=_read(entry / "operstate") == "up",
                mtu=int(_read(entry / "mtu", "0") or 0),
            )
        )
    return tuple(out)


def parse_ipmitool_lan(text: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "IP Address" and value.strip() not in ("", "0.0.0.0"):  # noqa: S104
            return value.strip()
    return ""


def collect(root: Path) -> Inventory:
    """The inventory of the machine whose filesystem is mounted at ``root``."""
    return Inventory(
        smbios=read_smbios(root),
        cpus=parse_cpuinfo(_read(_under(root, "/proc/cpuinfo"))),
        memory_bytes=parse_meminfo(_read(_under(root, "/proc/meminfo"))),
        disks=read_disks(root),
        nics=read_nics(root),
        bmc_address=parse_ipmitool_lan(_read(_under(root, "/run/bronze/ipmi-lan.txt"))),
    )
