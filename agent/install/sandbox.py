"""A machine's install disk as directories, for simulated fleets and fast tests.

Under ``--root``: ``BOOT-A/``, ``BOOT-B/``, ``STATE/`` (with ``grub/grubenv`` as a real
1024-byte environment block and ``grub/grub.cfg``), ``EPHEMERAL/`` (the machine's /var).
Power-on is :func:`agent.install.slots.grub_boot` (the same decision as the real grub.cfg);
a wipe empties ``EPHEMERAL/``. Everything else is the same :class:`SlotStore` code as on disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from agent.install.boot import Slot
from agent.install.installer import prepare_state
from agent.install.layout import PartLabel
from agent.install.slots import FileSource, Manifest, write_slot


class SandboxBackend:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, label: PartLabel) -> Path:
        return self.root / label.value

    @contextmanager
    def slot_dir(self, slot: Slot) -> Iterator[Path]:
        yield self.path(PartLabel(slot.label))

    @contextmanager
    def state_dir(self) -> Iterator[Path]:
        yield self.path(PartLabel.STATE)

    def wipe_ephemeral(self) -> None:
        eph = self.path(PartLabel.EPHEMERAL)
        shutil.rmtree(eph)
        eph.mkdir()


def install_sandbox(
    root: Path,
    files: Mapping[str, FileSource],
    manifest: Manifest,
    *,
    identity_dir: Path | None = None,
) -> SandboxBackend:
    """A fresh sandbox disk with ``files`` in slot A, last good A, no try armed."""
    backend = SandboxBackend(root)
    for label in PartLabel:
        if label not in (PartLabel.BIOS, PartLabel.EFI):
            backend.path(label).mkdir(parents=True, exist_ok=True)
    prepare_state(backend.path(PartLabel.STATE), identity_dir)
    write_slot(backend, Slot.A, files, manifest)
    return backend
