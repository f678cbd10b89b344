"""SQLAlchemy 2 models of the inventory. The schema changes only through Alembic migrations
(``migrations/versions``); a test checks that autogenerate finds no difference."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Machine(Base):
    __tablename__ = "machines"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    smbios_uuid: Mapped[str | None] = mapped_column(String(36), unique=True)
    serial: Mapped[str | None] = mapped_column(String(128))
    phase: Mapped[str] = mapped_column(String(32))
    power_observed: Mapped[str] = mapped_column(String(16), default="unknown")
    power_observed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    power_error: Mapped[str | None] = mapped_column(Text)
    """Why the last read or power operation could not see the state (``power_observed`` is then
    ``unknown``); ``None`` after a good read."""
    power_request: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The operator's last power/boot-device request: kind, action, at, operation_id, result,
    error (``server.power.writes``)."""
    fault_reason: Mapped[str | None] = mapped_column(Text)
    bmc_driver: Mapped[str | None] = mapped_column(String(16))
    bmc_address: Mapped[str | None] = mapped_column(String(255))
    bmc_port: Mapped[int | None] = mapped_column(Integer)
    bmc_username: Mapped[str | None] = mapped_column(String(128))
    bmc_password_enc: Mapped[str | None] = mapped_column(Text)
    """Fernet token; the key lives outside the database."""
    bmc_verify_tls: Mapped[bool] = mapped_column(Boolean, default=True)
    bmc_ca_bundle: Mapped[str | None] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(String(63), index=True)
    """The OS image the machine runs (installed or netbooted), set when a provisioning or an
    upgrade confirms it; an image named here cannot be deleted. For a machine that boots from
    the network this is its *last good* image: what its boot script serves."""
    boot_from: Mapped[str] = mapped_column(String(8), default="disk", server_default="disk")
    """``disk``: once ``ready`` it boots its installed disk; ``network``: diskless, its boot
    script serves its image in every phase (``server.boot.decide``)."""
    trial_image: Mapped[str | None] = mapped_column(String(63), index=True)
    """A netbooted machine's upgrade in flight: the image its boot script serves instead of
    ``image`` until the rollout confirms it healthy (then it becomes ``image``) or rolls it
    back (cleared). Kept on the server: a diskless machine has no boot counter of its own."""
    bmc_scheme: Mapped[str] = mapped_column(String(8), default="https", server_default="https")
    """Redfish only: ``http`` is an explicit, audited lab opt-out."""
    power_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Consecutive failed power-state reads; 3 put the machine in maintenance."""
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    """Optimistic-concurrency counter: a write based on a stale read fails instead of losing
    data."""
    list_view: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """The machine as the API shows it, encoded once when it is written (the read model of
    ``server/inventory/listview.py``): a page is its rows' bytes joined. ``NULL`` = stale: the
    database's triggers (migration 0017) clear it on any change to the machine, its NICs or its
    labels, every commit through a session renders the stale ones again, and a read that meets
    one renders the slow way."""

    nics: Mapped[list[Nic]] = relationship(
        back_populates="machine", cascade="all, delete-orphan", lazy="selectin", order_by="Nic.mac"
    )
    label_rows: Mapped[list[MachineLabel]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="MachineLabel.key"
    )

    __mapper_args__ = {"version_id_col": revision}
    __table_args__ = (  # a page walks (sort column, id) and stops: migration 0014
        Index("ix_machines_created_at_id", "created_at", "id"),
        Index("ix_machines_updated_at_id", "updated_at", "id"),
        Index("ix_machines_phase_id", "phase", "id"),
        Index(  # the stale views, so a commit finds them without a scan: migration 0017
            "ix_machines_list_view_stale",
            "id",
            sqlite_where=text("list_view IS NULL"),
            postgresql_where=text("list_view IS NULL"),
        ),
    )

    @property
    def labels(self) -> dict[str, str]:
        return {row.key: row.value for row in self.label_rows}


class Nic(Base):
    __tablename__ = "nics"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), index=True
    )
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    """Normalised: lower-case, colon-separated."""
    name: Mapped[str | None] = mapped_column(String(32))
    ip: Mapped[str | None] = mapped_column(String(15), unique=True)
    """Reserved IPv4 address on the provisioning network (answered by DHCP ``full`` mode)."""

    machine: Mapped[Machine] = relationship(back_populates="nics")


class MachineLabel(Base):
    """One row per label so selectors become indexed EXISTS sub-queries on every database."""

    __tablename__ = "machine_labels"

    machine_id: Mapped[str] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(317), primary_key=True)
    value: Mapped[str] = mapped_column(String(63))

    __table_args__ = (Index("ix_machine_labels_key_value", "key", "value"),)


class Event(Base):
    """Audit trail: every change to the inventory writes one, in the same transaction."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    machine_id: Mapped[str | None] = mapped_column(String(36))
    """Not a foreign key: events outlive the machines they describe."""
    machine_name: Mapped[str | None] = mapped_column(String(63))
    actor: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (  # newest first per machine or per kind: migration 0014
        Index("ix_events_machine_id_id", "machine_id", "id"),
        Index("ix_events_kind_id", "kind", "id"),
    )


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 of the token (tokens carry 256 random bits, so no salt or KDF is needed)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Operation(Base):
    """A power or boot-device request: 202 Accepted now, results later (``/api/v1/operations``)."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    replica: Mapped[str | None] = mapped_column(String(32))
    """The replica running it: if that replica's liveness lease lapses, its held items are freed."""

    items: Mapped[list[OperationItem]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="OperationItem.id"
    )

    __table_args__ = (Index("ix_operations_created_at_id", "created_at", "id"),)


class OperationItem(Base):
    """One machine's part of an operation."""

    __tablename__ = "operation_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    operation_id: Mapped[str] = mapped_column(
        ForeignKey("operations.id", ondelete="CASCADE"), index=True
    )
    machine_id: Mapped[str] = mapped_column(String(36), index=True)
    machine_name: Mapped[str] = mapped_column(String(63))
    active_machine_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    """Equals ``machine_id`` while queued or running, NULL after: the unique constraint lets
    exactly one operation at a time hold a machine, across every server replica."""
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Lease(Base):
    """A named, expiring lock in the database: lets exactly one server replica run a loop
    (e.g. power sync) while the others stand by and take over when it stops renewing."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Generation(Base):
    """A change counter per cached domain (``inventory``, ``tokens``), bumped as the last statement
    of every write transaction that touched the domain; read caches validate against it
    (``server/inventory/readcache.py``)."""

    __tablename__ = "generations"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class AgentBootstrapToken(Base):
    """The one bootstrap token of a machine (SHA-256 only; a new one replaces it), live or
    spent."""

    __tablename__ = "agent_bootstrap_tokens"

    machine_id: Mapped[str] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    token_hash: Mapped[str] = mapped_column(String(64))
    boot_ref: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set when an enrollment spent the token: a retry of that enrollment (same token, same key)
    # within the grace window gets the same certificate back (server.agents.tokens).
    spent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    spent_key_sha256: Mapped[str | None] = mapped_column(String(64))
    spent_cert_pem: Mapped[str | None] = mapped_column(Text)


class AgentState(Base):
    """What a machine's agent last reported, one row per machine."""

    __tablename__ = "agent_states"

    machine_id: Mapped[str] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    agent_version: Mapped[str | None] = mapped_column(String(64))
    boot_id: Mapped[str | None] = mapped_column(String(64))
    inventory: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hello_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    applied_config_version: Mapped[str | None] = mapped_column(String(64))
    staged_config_version: Mapped[str | None] = mapped_column(String(64))
    desired_config_version: Mapped[str | None] = mapped_column(String(64))
    pushed_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The last config document sent (with ``desired_config_version``)."""
    applied_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The document of ``applied_config_version`` when the server knows it (for diffs)."""
    connected: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disconnected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replica_url: Mapped[str | None] = mapped_column(String(255))
    """REST URL of the replica that holds (or last held) the session: node ops go there."""
    cert_serial: Mapped[str | None] = mapped_column(String(64))
    """Decimal: certificate serials are up to 159 bits."""
    cert_not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cert_previous_serial: Mapped[str | None] = mapped_column(String(64))
    """The certificate a renewal replaced: still opens sessions until the new one is used."""
    cert_revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the machine's certificates were last revoked (None: never, or enrolled since)."""
    identity_conflict: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Set when an agent reported hardware identity other than the recorded one."""
    last_command_id: Mapped[str | None] = mapped_column(String(64))
    last_command_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_command_error: Mapped[str | None] = mapped_column(Text)
    last_command_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    image_digest: Mapped[str | None] = mapped_column(String(64))
    """Digest of the OS image manifest the machine booted (``Hello``)."""
    slot: Mapped[str | None] = mapped_column(String(8))
    """The boot slot it booted (``A``/``B``; empty when netbooted)."""
    last_good_digest: Mapped[str | None] = mapped_column(String(64))
    """The image its bootloader falls back to (the last one confirmed healthy)."""


class AgentPendingCommand(Base):
    """A command saved before it is sent to the agent; deleted when its result arrives."""

    __tablename__ = "agent_pending_commands"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), index=True
    )
    command_id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    saved_by: Mapped[str | None] = mapped_column(String(32))
    """The hub (``CommandLedger.replica``, random per server start) that saved it; its own poll
    skips it. NULL: saved outside a hub (the rollout runner), listed to every replica's poll."""


class ConfigPatch(Base):
    """One JSON merge patch of the machine config: fleet-wide, for a label selector, or for one
    machine. Rendering order: scope (fleet, selector, machine), then ``priority``, then age."""

    __tablename__ = "config_patches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    scope: Mapped[str] = mapped_column(String(16), index=True)
    selector: Mapped[str | None] = mapped_column(Text)
    machine_id: Mapped[str | None] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), index=True
    )
    priority: Mapped[int] = mapped_column(Integer, default=0)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class BootProfile(Base):
    """What a machine network-boots: kernel, initrds, kernel args, chosen by a label selector
    (most requirements matched wins). Values are validated by ``pxe.ipxe.BootProfile`` on write
    and again when rendered."""

    __tablename__ = "boot_profiles"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    selector: Mapped[str] = mapped_column(Text, default="")
    """Kubernetes label selector; empty matches every machine (with the lowest specificity)."""
    kernel: Mapped[str] = mapped_column(Text)
    """An asset name (served from ``/assets/NAME``) or an http(s) URL."""
    initrds: Mapped[list[str]] = mapped_column(JSON, default=list)
    args: Mapped[list[str]] = mapped_column(JSON, default=list)
    agent: Mapped[bool] = mapped_column(Boolean, default=False)
    """Append the agent's kernel args (machine id, per-boot enrollment token, endpoints)."""
    image: Mapped[str | None] = mapped_column(String(63), index=True)
    """An OS image to boot instead of ``kernel``/``initrds`` (its default args come first)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class BootAsset(Base):
    """A file served to firmware (kernel, initrd). The bytes live in ``<data_dir>/assets``."""

    __tablename__ = "boot_assets"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class BootTimelineEvent(Base):
    """One step of a network boot, per MAC (DHCP, TFTP, script, kernel, initrd). Bounded:
    per MAC, by age and in total (``server.boot.timeline``)."""

    __tablename__ = "boot_timeline"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    mac: Mapped[str] = mapped_column(String(17))
    kind: Mapped[str] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(64))
    """``ip:port`` of the client where the protocol has one."""
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    source: Mapped[str] = mapped_column(String(64))
    """Who reported it: ``server`` or the token name of a remote ``bronze pxe``."""

    __table_args__ = (Index("ix_boot_timeline_mac_id", "mac", "id"),)


class Image(Base):
    """A versioned OS image: kernel + initrds (boot assets) + default kernel args, with the
    SHA-256 of each file frozen at creation (``agent.image_manifest``). Immutable but for its
    signature; deleting one that a machine, profile or rollout names is refused."""

    __tablename__ = "images"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The manifest document (its canonical bytes are what a signature covers)."""
    digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the canonical manifest."""
    signature: Mapped[str | None] = mapped_column(Text)
    signed_by: Mapped[str | None] = mapped_column(String(16))
    """Key id of the trusted key the signature verified against."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
