"""Which kernel modules the OS image carries, and the order ``/init`` loads them in.

A kernel module can only be inserted after the modules whose symbols it uses: the kernel build
records them in each ``.ko``'s ``.modinfo`` section (``depends=a,b``), and ``depmod`` collects
them into ``lib/modules/<ver>/modules.dep`` (``kernel/x/a.ko: kernel/y/b.ko ...``). We read the
dependencies from there (or, for a tree ``depmod`` has not run on, from each ``.ko``'s own
``depends=``): the image names only the *drivers* it wants (:data:`NIC_MODULES`,
:data:`DISK_MODULES`, :data:`NET_MODULES`, :data:`STORAGE_MODULES`); everything they need, and
the order, follows from the kernel's own data. :func:`load_order` is pure: a dependency-first
(post-order) walk, stable in the order the drivers are listed, refusing cycles.

Not every driver is loaded on every machine: :func:`driver_table` gives each driver its device
aliases (the ``alias=pci:v00001AF4d00001041sv*...`` patterns of its ``.modinfo``, the data
``depmod`` writes to ``modules.alias``) and its own load chain. ``/init`` matches each device's
``/sys/bus/*/devices/*/modalias`` against them and inserts only the chains of the drivers that
match, in rounds (``virtio_pci`` makes the ``virtio:`` devices that ``virtio_net`` binds to).

Module names treat ``-`` and ``_`` alike (``nvme-core.ko`` is the module ``nvme_core``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

NIC_MODULES: tuple[str, ...] = (
    "virtio_pci", "virtio_net", "e1000", "e1000e", "igb", "ixgbe", "i40e", "bnxt_en", "tg3",
    "r8169", "vmxnet3", "mlx5_core",
)  # fmt: skip
"""Network drivers: virtual machines (virtio, e1000, vmxnet3) and common server NICs."""

DISK_MODULES: tuple[str, ...] = (
    "virtio_blk", "virtio_scsi", "ahci", "nvme", "megaraid_sas", "mpt3sas",
)  # fmt: skip
"""Disk controllers."""

NET_MODULES: tuple[str, ...] = ("af_packet", "unix")
"""Loaded on every boot before DHCP: AF_PACKET (udhcpc's raw socket), AF_UNIX (asyncio)."""

STORAGE_MODULES: tuple[str, ...] = ("sd_mod", "crc32c_generic", "ext4")
"""Loaded on every boot, in the background while DHCP runs: the SCSI disk driver (SATA and SAS
controllers find their disks asynchronously, after their own module is in), ext4 and the
checksum it asks for (STATE and EPHEMERAL; the installer's mounts)."""

DEVICE_BUSES: tuple[str, ...] = ("pci", "virtio", "scsi")
"""The buses whose device aliases ``/init`` matches (the drivers above bind through these)."""

_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)")
_ALIAS = re.compile(rb"(?:^|\x00)alias=([^\x00]*)")
_SAFE_PATTERN = re.compile(r"^[A-Za-z0-9_:*?,.-]+$")
"""Alias patterns ``/init`` can put in a ``case`` arm unquoted (glob characters only)."""


class ModuleError(Exception):
    """A wanted module is missing from the tree, or the dependencies form a cycle."""


def module_name(path_or_name: str) -> str:
    """``kernel/drivers/nvme/host/nvme-core.ko`` -> ``nvme_core``."""
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        base = base.removesuffix(suffix)
    return base.replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """Every module of one kernel: its file (relative to ``lib/modules/<ver>``) and what it
    depends on (module names)."""

    paths: Mapping[str, str]
    depends: Mapping[str, tuple[str, ...]]


def parse_modules_dep(text: str) -> ModuleIndex:
    """The index from ``modules.dep`` text (``path: dep-path dep-path``)."""
    paths: dict[str, str] = {}
    depends: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if not sep:
            continue
        name = module_name(path.strip())
        paths[name] = path.strip()
        depends[name] = tuple(module_name(d) for d in deps.split())
    return ModuleIndex(paths, depends)


def depends_from_modinfo(data: bytes) -> tuple[str, ...]:
    """The ``depends=`` of one ``.ko`` file's ``.modinfo`` strings (NUL-separated)."""
    m = _DEPENDS.search(data)
    if m is None or not m.group(1):
        return ()
    return tuple(module_name(d) for d in m.group(1).decode().split(",") if d)


def read_index(moddir: Path) -> ModuleIndex:
    """The index of ``lib/modules/<ver>``: ``modules.dep`` when present, else every ``.ko``'s
    own ``depends=``."""
    dep = moddir / "modules.dep"
    if dep.is_file():
        return parse_modules_dep(dep.read_text())
    paths = {module_name(p.name): str(p.relative_to(moddir)) for p in moddir.rglob("*.ko")}
    return ModuleIndex(paths, _LazyDepends(moddir, paths))  # type: ignore[arg-type]


class _LazyDepends(dict[str, tuple[str, ...]]):
    """Reads a module's ``depends=`` when first asked (a kernel has thousands of modules)."""

    def __init__(self, moddir: Path, paths: Mapping[str, str]) -> None:
        super().__init__()
        self._moddir = moddir
        self._paths = paths

    def __missing__(self, name: str) -> tuple[str, ...]:
        deps = depends_from_modinfo((self._moddir / self._paths[name]).read_bytes())
        self[name] = deps
        return deps

    def __contains__(self, name: object) -> bool:
        return name in self._paths


def load_order(
    wanted: Iterable[str], index: ModuleIndex, *, builtin: frozenset[str] = frozenset()
) -> list[str]:
    """The files (relative to ``lib/modules/<ver>``) to insert, each after its dependencies.

    ``builtin`` modules (``modules.builtin``) are in the kernel already and are skipped, as are
    their names among the wanted. Raises :class:`ModuleError` for a module that is neither in
    the tree nor built in, and for a dependency cycle."""
    order: list[str] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        name = module_name(name)
        if name in done or name in builtin:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise ModuleError(f"module dependency cycle: {cycle}")
        if name not in index.paths:
            chain = " <- ".join(reversed([*visiting, name]))
            raise ModuleError(f"module {name} not found in the kernel's modules ({chain})")
        visiting.append(name)
        for dep in index.depends[name]:
            visit(dep)
        visiting.pop()
        done.add(name)
        order.append(index.paths[name])

    for name in wanted:
        visit(name)
    return order


def read_builtin(moddir: Path) -> frozenset[str]:
    """Modules compiled into the kernel (``modules.builtin``), by name."""
    try:
        text = (moddir / "modules.builtin").read_text()
    except FileNotFoundError:
        return frozenset()
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def aliases_from_modinfo(data: bytes, buses: Iterable[str] = DEVICE_BUSES) -> tuple[str, ...]:
    """The device alias patterns (``pci:v...``) of one ``.ko``'s ``.modinfo``, on ``buses``
    only (``fs-ext4``, ``net-pf-17`` and the like name no device), sorted, without duplicates.
    A pattern with a character that is not plain glob (none in Debian's kernels) is refused."""
    prefixes = tuple(f"{b}:" for b in buses)
    found = set()
    for m in _ALIAS.finditer(data):
        alias = m.group(1).decode(errors="replace")
        if not alias.startswith(prefixes):
            continue
        if not _SAFE_PATTERN.match(alias):
            raise ModuleError(f"module alias {alias!r} has characters /init cannot match")
        found.add(alias)
    return tuple(sorted(found))


@dataclass(frozen=True)
class Driver:
    """A device driver of the image: the modalias patterns it binds and its load chain."""

    name: str
    aliases: tuple[str, ...]
    chain: tuple[str, ...]
    """Module files (relative to ``lib/modules/<ver>``), dependencies first, the driver last."""


def driver_table(
    wanted: Iterable[str],
    index: ModuleIndex,
    moddir: Path,
    *,
    builtin: frozenset[str] = frozenset(),
    buses: Iterable[str] = DEVICE_BUSES,
) -> list[Driver]:
    """One :class:`Driver` per wanted module that is not built in, in the order given (each
    chain from :func:`load_order`, its aliases from the ``.ko`` file)."""
    table = []
    for name in map(module_name, wanted):
        chain = load_order([name], index, builtin=builtin)
        if not chain:
            continue  # built in: the kernel binds it without /init
        aliases = aliases_from_modinfo((moddir / index.paths[name]).read_bytes(), buses)
        table.append(Driver(name, aliases, tuple(chain)))
    return table
