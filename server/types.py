"""Fixed vocabularies of the control plane (stored as strings, compared as StrEnums)."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Where a machine is in its lifecycle."""

    DISCOVERED = "discovered"
    """Seen on the network (PXE, agent) but not yet accepted by an operator."""
    REGISTERED = "registered"
    """Known to bronze, not yet provisioned."""
    PROVISIONING = "provisioning"
    """Network-booting into the installer/agent and applying its config."""
    READY = "ready"
    """Installed and running its configured OS; boots from disk."""
    UPGRADING = "upgrading"
    """Part of a rolling upgrade right now."""
    MAINTENANCE = "maintenance"
    """Taken out of automation by an operator or after repeated faults; nothing destructive happens."""
    FAILED = "failed"
    """Provisioning or upgrade failed; needs an operator."""


class Role(StrEnum):
    """API token roles, each including the rights of the ones below it."""

    READER = "reader"
    """GET only."""
    OPERATOR = "operator"
    """Machines, power, boot, config, upgrades."""
    ADMIN = "admin"
    """Everything, including token management."""
    BOOT = "boot"
    """Outside the nesting: only the boot plane's calls (``/api/v1/boot/decide`` and timeline
    ingestion), for a remote ``bronze pxe``. Admin may make them too."""

    @property
    def rank(self) -> int:
        return {"boot": -1, "reader": 0, "operator": 1, "admin": 2}[self.value]


class DesiredPower(StrEnum):
    """The power state an operator asked for (observed state comes from the BMC)."""

    ON = "on"
    """Keep the machine powered on."""
    OFF = "off"
    """Keep the machine powered off."""


class OpStatus(StrEnum):
    """Where an operation (or one machine's part of it) stands."""

    QUEUED = "queued"
    """Accepted, not started."""
    RUNNING = "running"
    """Talking to the BMC(s)."""
    SUCCEEDED = "succeeded"
    """Done and verified by reading back."""
    FAILED = "failed"
    """Gave up; ``error`` says why."""
