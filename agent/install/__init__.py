"""Installing bronze on a node's disk and upgrading it with A/B slots (see docs/install.md).

API: :func:`plan_layout`, :func:`install`, :class:`SlotStore` over :class:`BlockBackend` or
:class:`SandboxBackend` (:func:`install_sandbox`), :func:`grub_boot`, :func:`choose_boot`,
:mod:`agent.install.grubenv`.
"""

from agent.install.block import BlockBackend
from agent.install.boot import Slot, choose_boot, render_grub_cfg, slot_from_cmdline
from agent.install.installer import install
from agent.install.layout import Firmware, LayoutError, Partition, PartLabel, Sizes, plan_layout
from agent.install.sandbox import SandboxBackend, install_sandbox
from agent.install.slots import Manifest, SlotError, SlotStore, Status, grub_boot
from agent.install.tools import InstallError

__all__ = [
    "BlockBackend", "Firmware", "InstallError", "LayoutError", "Manifest", "PartLabel",
    "Partition", "SandboxBackend", "Sizes", "Slot", "SlotError", "SlotStore", "Status",
    "choose_boot", "grub_boot", "install", "install_sandbox", "plan_layout", "render_grub_cfg",
    "slot_from_cmdline",
]  # fmt: skip
