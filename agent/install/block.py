"""The slots of a real install disk: partitions found by GPT label and mounted when used.

Labels are read from the partition table (``sfdisk --json``), not from udev symlinks, so this
works in an initramfs and in containers. Each operation mounts the partition it needs on a
temporary directory and unmounts it after (sync first). On a booted node STATE is already
mounted (``/system/state``): pass ``state_mount`` to use it in place.

EPHEMERAL is wiped with ``mkfs.ext4``, which needs it unmounted: the installed OS's agent calls
``wipe_ephemeral_if_requested()`` when it starts, and the wipe unmounts ``/var`` and mounts
the new filesystem back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.install.boot import Slot
from agent.install.layout import PartLabel
from agent.install.tools import (
    InstallError,
    mounted,
    mountpoint_of,
    partition_labels,
    partition_node,
    run,
)


class BlockBackend:
    def __init__(self, disk: str, *, state_mount: Path | None = None) -> None:
        self.disk = disk
        self.state_mount = state_mount
        self._labels: dict[str, int] | None = None

    def node(self, label: PartLabel) -> str:
        if self._labels is None:
            self._labels = partition_labels(self.disk)
        number = self._labels.get(label.value)
        if number is None:
            raise InstallError(f"{self.disk} has no partition labelled {label.value}")
        return partition_node(self.disk, number)

    @contextmanager
    def slot_dir(self, slot: Slot) -> Iterator[Path]:
        with mounted(self.node(PartLabel(slot.label))) as where:
            yield where

    @contextmanager
    def state_dir(self) -> Iterator[Path]:
        if self.state_mount is not None:
            yield self.state_mount
            return
        with mounted(self.node(PartLabel.STATE)) as where:
            yield where

    def wipe_ephemeral(self) -> None:
        """mkfs EPHEMERAL. The OS image's ``/init`` mounts it at ``/var`` before the agent
        starts (and nothing there is open yet): it is unmounted, made anew and mounted back
        where it was. A busy ``/var`` fails the umount, and nothing is wiped."""
        node = self.node(PartLabel.EPHEMERAL)
        where = mountpoint_of(node)
        if where is not None:
            run(["umount", where])
        run(["mkfs.ext4", "-F", "-q", "-L", PartLabel.EPHEMERAL.value, node])
        if where is not None:
            run(["mount", node, where])
