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
    """Taken out of automation by an operator or after repeated faults; nothing destructive
    happens."""
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


class EventKind(StrEnum):
    """What an audit event records (``events.kind``). Every event is written with one of these;
    ``GET /api/v1/events?kind=`` takes one of them or an :class:`EventGroup`. The table in
    docs/events.md is checked against this enum by tests/server/api/test_event_kinds.py."""

    MACHINE_CREATED = "machine.created"
    """An operator registered a machine (``POST /api/v1/machines``)."""
    MACHINE_UPDATED = "machine.updated"
    """A machine's fields changed; ``data`` has the changed fields (a phase change as from/to)."""
    MACHINE_DELETED = "machine.deleted"
    """A machine was deleted; ``data.macs`` lists its NICs."""
    MACHINE_DISCOVERED = "machine.discovered"
    """The boot plane saw an unknown MAC PXE-boot and recorded it as a discovered machine."""
    MACHINE_MAINTENANCE = "machine.maintenance"
    """Power sync put a machine into maintenance after repeated BMC faults."""
    MACHINE_BMC_TLS_INSECURE = "machine.bmc.tls_insecure"
    """A BMC was configured without TLS certificate verification."""
    MACHINE_BMC_PLAINTEXT = "machine.bmc.plaintext"
    """A BMC was configured over plain HTTP (credentials cross the network unencrypted)."""
    POWER_CHANGED = "power.changed"
    """Power sync observed a machine's power state change."""
    POWER_REQUESTED = "power.requested"
    """An operator asked for a power change (the operation id is in ``data``)."""
    BOOT_DEVICE_REQUESTED = "boot-device.requested"
    """An operator asked for a boot-device override."""
    POWER_SUCCEEDED = "power.succeeded"
    """A power operation on the machine succeeded (verified by reading the state back)."""
    POWER_FAILED = "power.failed"
    """A power operation on the machine failed; the message says why in operator terms."""
    BOOT_DEVICE_SUCCEEDED = "boot-device.succeeded"
    """A boot-device override was set on the machine's BMC."""
    BOOT_DEVICE_FAILED = "boot-device.failed"
    """Setting a boot-device override failed."""
    POWER_SYNC_FAILED = "power.sync_failed"
    """Power sync could not read a machine's power state from its BMC."""
    TOKEN_CREATED = "token.created"  # noqa: S105 - an event name
    """An API token was created (by an admin, seeded from ``BRONZE_ADMIN_TOKEN``, or generated)."""
    TOKEN_REVOKED = "token.revoked"  # noqa: S105 - an event name
    """An API token was revoked."""
    AGENT_TOKEN_ISSUED = "agent.token.issued"  # noqa: S105 - an event name
    """A one-time enrollment token was issued for a machine's agent."""
    AGENT_TOKEN_WIPED = "agent.token.wiped"  # noqa: S105 - an event name
    """A machine's enrollment token was wiped (power-off, reprovision, delete)."""
    AGENT_REBOOT = "agent.reboot"
    """An operator asked a machine's agent to reboot."""
    AGENT_CONFIG_CONFIRM = "agent.config.confirm"
    """An operator confirmed a config applied in ``try`` mode."""
    CONFIG_PATCH_CREATED = "config.patch.created"
    """A config patch was added (fleet, selector or machine layer)."""
    CONFIG_PATCH_DELETED = "config.patch.deleted"
    """A config patch was deleted."""
    BOOT_PROFILE_CREATED = "boot.profile.created"
    """A boot profile was created."""
    BOOT_PROFILE_UPDATED = "boot.profile.updated"
    """A boot profile was replaced."""
    BOOT_PROFILE_DELETED = "boot.profile.deleted"
    """A boot profile was deleted."""
    BOOT_ASSET_UPLOADED = "boot.asset.uploaded"
    """A boot asset (kernel, initrd) was uploaded and its SHA-256 verified."""
    BOOT_ASSET_DELETED = "boot.asset.deleted"
    """A boot asset was deleted."""
    MACHINE_ACCEPTED = "machine.accepted"
    """A discovered machine was accepted (``data.rule``: serial, uuid, mac or command)."""
    MACHINE_INSPECTED = "machine.inspected"
    """Out-of-band inspection through the BMC filled in identity or hardware facts."""
    MACHINE_INSPECT_CONFLICT = "machine.inspect.conflict"
    """The BMC reported a value that differs from the recorded one (not overwritten)."""
    AGENT_ENROLL_PENDING = "agent.enroll.pending"
    """A discovered machine's agent asked to enroll; it gets nothing until accepted."""
    AGENT_ENROLL_REFUSED = "agent.enroll.refused"
    """An enrollment was refused (``data.reason``: wrong, expired or used token...); at most one
    event per machine and reason a minute. The agent is told only "denied"."""
    AGENT_ENROLL_REPEATED = "agent.enroll.repeated"
    """An agent retried an enrollment whose answer it never got (same token, same key, within
    ``BRONZE_AGENT_ENROLL_GRACE``): it was answered the same certificate again."""
    AGENT_IDENTITY_MISMATCH = "agent.identity.mismatch"
    """An agent reported an SMBIOS UUID or serial other than the recorded one (kept as is)."""
    AGENT_CERTIFICATE_REVOKED = "agent.certificate.revoked"
    """A machine's agent certificates were revoked (re-enrollment, reprovision, delete, or
    ``POST .../agent/revoke``); its live sessions are closed."""
    AGENT_TROUBLE = "agent.trouble"
    """An agent reported a clock or certificate problem (clock skew, expired, not yet valid)."""
    PKI_EXPIRING = "pki.expiring"
    """The fleet CA or the agent API's server certificate expires within 30 days."""
    IMAGE_CREATED = "image.created"
    """An OS image was made from uploaded assets (their SHA-256 frozen in its manifest)."""
    IMAGE_SIGNED = "image.signed"
    """An image's signature verified against a trusted key and was attached."""
    IMAGE_DELETED = "image.deleted"
    """An OS image was deleted."""
    ROLLOUT_UPGRADE_CREATED = "rollout.upgrade.created"
    """An upgrade rollout was created (its batches are planned and persisted)."""
    ROLLOUT_PROVISION_CREATED = "rollout.provision.created"
    """A provisioning rollout was created (``POST /api/v1/provisions``)."""
    ROLLOUT_DEPROVISION_CREATED = "rollout.deprovision.created"
    """Machines are being deprovisioned (``POST /api/v1/deprovisions``, ``.../deprovision``)."""
    ROLLOUT_RUNNING = "rollout.running"
    """A paused rollout was resumed."""
    ROLLOUT_PAUSED = "rollout.paused"
    """A rollout was paused: no new machine starts."""
    ROLLOUT_ABORTING = "rollout.aborting"
    """A rollout is being aborted: no new machine starts; in-flight ones finish or roll back."""
    ROLLOUT_ABORTED = "rollout.aborted"
    """An aborted rollout ended; machines never started were skipped."""
    ROLLOUT_SUCCEEDED = "rollout.succeeded"
    """Every machine of a rollout finished its steps."""
    ROLLOUT_COMPLETED_WITH_FAILURES = "rollout.completed_with_failures"
    """Every batch ran; some machines failed, within the failure budget."""
    ROLLOUT_FAILED = "rollout.failed"
    """A rollout halted: more machines failed than its failure budget."""
    ROLLOUT_MACHINE_STARTED = "rollout.machine.started"
    """A machine started its upgrade (phase ``upgrading``) or provisioning (``provisioning``)."""
    ROLLOUT_MACHINE_STEP = "rollout.machine.step"
    """A machine moved to the next upgrade or provisioning step (writing, booting, netbooting,
    installing, ...), or a step retried (``data.action``)."""
    ROLLOUT_MACHINE_SUCCEEDED = "rollout.machine.succeeded"
    """A machine runs the new image, confirmed as its last good one (phase ``ready``)."""
    ROLLOUT_MACHINE_FAILED = "rollout.machine.failed"
    """A machine's upgrade failed (``data``/message say at which step and why)."""

    @property
    def group(self) -> EventGroup:
        return EventGroup(self.value.split(".", 1)[0])


class EventGroup(StrEnum):
    """The first part of an event kind: ``?kind=machine`` lists every ``machine.*`` event."""

    MACHINE = "machine"
    """Machine inventory: created, updated, deleted, discovered, maintenance, BMC warnings."""
    POWER = "power"
    """Observed power state and power sync failures."""
    TOKEN = "token"  # noqa: S105 - an event name
    """API tokens."""
    AGENT = "agent"
    """Machine agents: enrollment tokens, reboots, config confirmations."""
    CONFIG = "config"
    """Config patches."""
    BOOT = "boot"
    """Boot profiles and assets."""
    PKI = "pki"
    """The fleet CA and the agent API's certificate."""
    BOOT_DEVICE = "boot-device"
    """Boot-device operations."""
    IMAGE = "image"
    """OS images."""
    ROLLOUT = "rollout"
    """Rolling upgrades, provisioning, and each machine's steps in them."""
