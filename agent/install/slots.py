"""A/B slots on a node: write the inactive slot, arm a try, confirm a healthy boot.

The upgrade protocol (Talos A/B; GRUB boot counting, see :mod:`agent.install.boot`):

1. ``write_inactive(files, manifest)`` writes only the slot not running. It first disarms any
   try aimed at that slot and deletes the slot's ``manifest.json`` (a slot without a manifest is
   never armed), streams every file with fsync, re-reads them to verify their sha256, and writes
   ``boot.cfg`` and ``manifest.json`` last. A failure anywhere raises and leaves the bootloader
   untouched: the machine still boots its current slot.
2. ``arm_try(slot, tries, preserve)`` re-verifies the slot, records the upgrade
   (``STATE/slots/upgrade.json``: slot, version, preserve) and *then* sets ``try_slot`` /
   ``try_count`` in the GRUB environment block: the env write is the commit point.
3. On the new slot's first boot, early (before /var is mounted): ``wipe_ephemeral_if_requested()``
   makes a fresh EPHEMERAL only if the record says preserve=false and we *are* booted in the
   recorded slot; after a fallback to the old slot nothing is wiped.
4. When healthy: ``confirm_good()`` makes the booted slot ``default_slot`` and clears the try.
   If it never happens, GRUB spends the tries and returns to ``default_slot`` by itself.

The same :class:`SlotStore` runs over two backends (:class:`SlotBackend`): a real disk
(:mod:`agent.install.block`) and a directory sandbox for simulated machines
(:mod:`agent.install.sandbox`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from agent.install import grubenv
from agent.install.boot import (
    DEFAULT_SLOT,
    MAX_TRIES,
    TRY_COUNT,
    TRY_SLOT,
    KernelEntry,
    Slot,
    choose_boot,
    render_slot_cfg,
)
from agent.install.tools import InstallError, fsync_dir, write_atomic

FileSource = Path | Callable[[], BinaryIO]
ENV_PATH = "grub/grubenv"
RECORD_PATH = "slots/upgrade.json"
MANIFEST = "manifest.json"
SLOT_CFG = "boot.cfg"
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_CHUNK = 1024 * 1024


class SlotError(InstallError):
    """A slot operation that is not allowed in the current state (nothing was changed)."""


@dataclass(frozen=True)
class Manifest:
    """What a boot slot holds. ``sha256`` is filled in by the writer (expected values, if given
    by the caller, must match what was written)."""

    version: str
    kernel: str
    initrds: tuple[str, ...] = ()
    kernel_args: tuple[str, ...] = ()
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def files(self) -> tuple[str, ...]:
        return (self.kernel, *self.initrds)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        d = json.loads(data)
        return cls(
            version=str(d["version"]),
            kernel=str(d["kernel"]),
            initrds=tuple(d.get("initrds", ())),
            kernel_args=tuple(d.get("kernel_args", ())),
            sha256=dict(d.get("sha256", {})),
        )


@dataclass(frozen=True)
class UpgradeRecord:
    slot: Slot
    version: str
    preserve: bool
    wiped: bool = False


@dataclass(frozen=True)
class Status:
    booted: Slot
    booted_version: str | None
    last_good: Slot
    try_slot: Slot | None
    try_count: int | None
    versions: dict[Slot, str | None]
    upgrade: UpgradeRecord | None

    @property
    def rolled_back(self) -> bool:
        """An upgrade was recorded for a slot we are not running and no try is left."""
        return (
            self.upgrade is not None and self.upgrade.slot != self.booted and self.try_slot is None
        )


class SlotBackend(Protocol):
    """Where the slots and STATE live; each context yields a writable directory."""

    def slot_dir(self, slot: Slot) -> AbstractContextManager[Path]: ...

    def state_dir(self) -> AbstractContextManager[Path]: ...

    def wipe_ephemeral(self) -> None: ...


def read_env(backend: SlotBackend) -> dict[str, str]:
    with backend.state_dir() as state:
        return grubenv.decode((state / ENV_PATH).read_bytes())


def write_env(backend: SlotBackend, env: dict[str, str]) -> None:
    with backend.state_dir() as state:
        (state / ENV_PATH).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(state / ENV_PATH, grubenv.encode(env))


def grub_boot(backend: SlotBackend) -> Slot:
    """What GRUB does at power-on (same decision as the rendered grub.cfg): returns the slot."""
    env = read_env(backend)
    slot, new = choose_boot(env)
    if new != env:
        write_env(backend, new)
    return slot


def write_slot(
    backend: SlotBackend, slot: Slot, files: Mapping[str, FileSource], manifest: Manifest
) -> Manifest:
    """Replace a slot's contents with ``files``; verified; manifest written last."""
    names = set(manifest.files)
    if names != set(files):
        raise SlotError(f"manifest names files {sorted(names)}, given {sorted(files)}")
    for name in names:
        if not _FILE_NAME.fullmatch(name) or name in (MANIFEST, SLOT_CFG):
            raise SlotError(f"bad file name {name!r} for a boot slot")
    with backend.slot_dir(slot) as root:
        (root / MANIFEST).unlink(missing_ok=True)
        fsync_dir(root)
        for old in root.iterdir():
            if old.is_file() and old.name not in names:
                old.unlink()
        sums = {name: _copy(files[name], root / name) for name in sorted(names)}
        for name, digest in sums.items():
            expected = manifest.sha256.get(name)
            if expected is not None and expected != digest:
                raise InstallError(f"slot {slot}: {name} sha256 {digest}, expected {expected}")
        written = Manifest(
            manifest.version, manifest.kernel, manifest.initrds, manifest.kernel_args, sums
        )
        _verify_files(root, written, slot)
        entry = KernelEntry(written.kernel, written.initrds, written.kernel_args)
        write_atomic(root / SLOT_CFG, render_slot_cfg(slot, entry).encode())
        write_atomic(root / MANIFEST, written.to_json())
    return written


def _copy(src: FileSource, dst: Path) -> str:
    digest = hashlib.sha256()
    with src.open("rb") if isinstance(src, Path) else src() as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                os.write(fd, chunk)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # verify reads the disk
        finally:
            os.close(fd)
    return digest.hexdigest()


def _verify_files(root: Path, manifest: Manifest, slot: Slot) -> None:
    for name in manifest.files:
        digest = hashlib.sha256()
        try:
            with open(root / name, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise InstallError(f"slot {slot}: cannot read {name}: {exc}") from exc
        if digest.hexdigest() != manifest.sha256.get(name):
            raise InstallError(f"slot {slot}: {name} does not match its manifest sha256")


class SlotStore:
    """The node's two slots, seen from the slot it is ``booted`` in."""

    def __init__(self, backend: SlotBackend, booted: Slot) -> None:
        self.backend = backend
        self.booted = booted

    def active(self) -> Slot:
        return self.booted

    def inactive(self) -> Slot:
        return self.booted.other

    def manifest(self, slot: Slot) -> Manifest | None:
        with self.backend.slot_dir(slot) as root:
            try:
                return Manifest.from_json((root / MANIFEST).read_bytes())
            except (OSError, ValueError, KeyError):
                return None

    def verify(self, slot: Slot) -> Manifest:
        """The slot's manifest, after checking every file against it."""
        with self.backend.slot_dir(slot) as root:
            try:
                manifest = Manifest.from_json((root / MANIFEST).read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                raise SlotError(f"slot {slot} holds no complete image") from exc
            _verify_files(root, manifest, slot)
        return manifest

    def write_inactive(self, files: Mapping[str, FileSource], manifest: Manifest) -> Manifest:
        env = read_env(self.backend)
        if env.get(DEFAULT_SLOT, "A") != self.booted.value:
            raise SlotError(
                f"booted slot {self.booted} is not confirmed good (last good is "
                f"{env.get(DEFAULT_SLOT, 'A')}): confirm_good() before writing the other slot"
            )
        target = self.inactive()
        if env.get(TRY_SLOT) == target.value:
            self._set_record(None)
            write_env(self.backend, _without_try(env))
        return write_slot(self.backend, target, files, manifest)

    def arm_try(self, slot: Slot, tries: int = 3, *, preserve: bool = True) -> None:
        if slot == self.booted:
            raise SlotError(f"slot {slot} is the running slot; arm the other one")
        if not 1 <= tries <= MAX_TRIES:
            raise SlotError(f"tries must be 1..{MAX_TRIES}, got {tries}")
        manifest = self.verify(slot)
        self._set_record(UpgradeRecord(slot, manifest.version, preserve))
        env = read_env(self.backend)
        write_env(self.backend, {**env, TRY_SLOT: slot.value, TRY_COUNT: str(tries)})

    def confirm_good(self) -> bool:
        """This boot is healthy: make it last good. Returns whether anything changed."""
        record = self.upgrade_record()
        if record and record.slot == self.booted and not record.preserve and not record.wiped:
            raise SlotError("EPHEMERAL wipe requested and not done: wipe_ephemeral_if_requested()")
        env = read_env(self.backend)
        armed_other = env.get(TRY_SLOT) == self.booted.other.value and TRY_COUNT in env
        # NOTE: a try armed for the *other* slot (armed, not yet rebooted) survives: an agent
        # restarting between arm_try() and the reboot must not cancel the upgrade.
        new = {**(env if armed_other else _without_try(env)), DEFAULT_SLOT: self.booted.value}
        changed = new != env
        if changed:
            write_env(self.backend, new)
        if record is not None and not (armed_other and record.slot != self.booted):
            self._set_record(None)
        return changed

    def wipe_ephemeral_if_requested(self) -> bool:
        """First boot of a new slot with preserve=false: a fresh EPHEMERAL. Else nothing."""
        record = self.upgrade_record()
        if record is None or record.preserve or record.wiped or record.slot != self.booted:
            return False
        self.backend.wipe_ephemeral()
        self._set_record(UpgradeRecord(record.slot, record.version, record.preserve, True))
        return True

    def status(self) -> Status:
        env = read_env(self.backend)
        versions = {s: (m.version if (m := self.manifest(s)) else None) for s in Slot}
        try_slot = env.get(TRY_SLOT)
        count = env.get(TRY_COUNT)
        return Status(
            booted=self.booted,
            booted_version=versions[self.booted],
            last_good=Slot.B if env.get(DEFAULT_SLOT) == "B" else Slot.A,
            try_slot=Slot(try_slot) if try_slot in ("A", "B") else None,
            try_count=int(count) if count and count.isdigit() else None,
            versions=versions,
            upgrade=self.upgrade_record(),
        )

    def upgrade_record(self) -> UpgradeRecord | None:
        with self.backend.state_dir() as state:
            try:
                d = json.loads((state / RECORD_PATH).read_bytes())
                return UpgradeRecord(Slot(d["slot"]), d["version"], d["preserve"], d["wiped"])
            except (OSError, ValueError, KeyError):
                return None

    def _set_record(self, record: UpgradeRecord | None) -> None:
        with self.backend.state_dir() as state:
            path = state / RECORD_PATH
            if record is None:
                path.unlink(missing_ok=True)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(asdict(record), sort_keys=True).encode())


def _without_try(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in (TRY_SLOT, TRY_COUNT)}
