"""What an operation does: the ``operations.kind`` vocabulary (stored values are these strings)."""

from __future__ import annotations

from enum import StrEnum


class OperationKind(StrEnum):
    """The kind of a power-plane operation; its ``action`` is read in this kind's vocabulary."""

    POWER = "power"
    """Change the power state; ``action`` is a :class:`bmc.PowerAction` (on, off, cycle...)."""
    BOOT_DEVICE = "boot-device"
    """Set the boot override; ``action`` is a :class:`bmc.BootDevice` (pxe, disk...)."""
