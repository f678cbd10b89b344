"""REST request/response models (pydantic at the boundary only)."""

from __future__ import annotations

import uuid as uuidlib
from datetime import datetime
from ipaddress import IPv4Address
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from bmc import DriverKind
from server.inventory.validation import (
    check_dns_label,
    check_label_key,
    check_label_value,
    check_labels,
    normalize_mac,
)
from server.types import Phase, Role


def _uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise ValueError(f"invalid SMBIOS uuid {value!r}") from None


Mac = Annotated[str, AfterValidator(normalize_mac)]
DnsLabel = Annotated[str, AfterValidator(check_dns_label)]
Labels = Annotated[dict[str, str], AfterValidator(check_labels)]
SmbiosUuid = Annotated[str, AfterValidator(_uuid)]


def _host_address(ip: IPv4Address) -> IPv4Address:
    if (
        ip.is_multicast
        or ip.is_unspecified
        or ip.is_loopback
        or ip == IPv4Address("255.255.255.255")
    ):
        raise ValueError(f"{ip} cannot be a host's address")
    return ip


def _dotted_quad(value: object) -> object:
    if not isinstance(value, str | IPv4Address):
        raise ValueError("an IPv4 address is written as a dotted-quad string")
    return value


HostIPv4 = Annotated[IPv4Address, BeforeValidator(_dotted_quad), AfterValidator(_host_address)]


def _unique_macs(nics: list[NicIn] | None) -> list[NicIn] | None:
    macs = [n.mac for n in nics or ()]
    if len(set(macs)) != len(macs):
        raise ValueError("the same MAC address is listed twice")
    ips = [n.ip for n in nics or () if n.ip is not None]
    if len(set(ips)) != len(ips):
        raise ValueError("the same IP address is reserved for two NICs")
    return nics


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NicIn(Strict):
    mac: Mac
    name: str | None = Field(default=None, max_length=32, pattern=r"^[A-Za-z0-9_.:-]+$")
    ip: HostIPv4 | None = None
    """Reserved address on the provisioning network: DHCP ``full`` mode always offers it to this
    MAC."""

    @property
    def spec(self) -> tuple[str, str | None, str | None]:
        return self.mac, self.name, None if self.ip is None else str(self.ip)


class BmcIn(Strict):
    driver: DriverKind = DriverKind.auto
    address: str = Field(min_length=1, max_length=255)
    """host or host:port; no scheme, path or credentials."""
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = Field(default=None, max_length=128)
    password: SecretStr | None = Field(default=None, max_length=256)
    """Write-only: stored encrypted, never returned."""
    verify_tls: bool = True
    """Redfish only. Turning it off is an explicit, audited opt-out."""
    ca_bundle: str | None = Field(default=None, max_length=65536)
    """PEM CA bundle to verify this BMC's certificate."""
    scheme: Literal["https", "http"] = "https"
    """Redfish only. ``http`` (labs, emulators) is an explicit, audited opt-out."""

    @field_validator("ca_bundle")
    @classmethod
    def _pem(cls, v: str | None) -> str | None:
        if v is not None and "-----BEGIN CERTIFICATE-----" not in v:
            raise ValueError("ca_bundle must be PEM certificates")
        return v


class BmcOut(BaseModel):
    driver: str
    scheme: str | None
    """Redfish (and ``auto``) only; ``None`` for IPMI."""
    address: str
    port: int | None
    username: str | None
    has_password: bool
    verify_tls: bool
    has_ca_bundle: bool


BootFrom = Literal["disk", "network"]


class MachineCreate(Strict):
    name: DnsLabel
    uuid: SmbiosUuid | None = None
    serial: str | None = Field(default=None, max_length=128)
    nics: list[NicIn] = Field(min_length=1, max_length=64)
    labels: Labels = Field(default_factory=dict, max_length=64)
    phase: Phase = Phase.REGISTERED
    bmc: BmcIn | None = None
    hardware: dict[str, Any] = Field(default_factory=dict)
    boot_from: BootFrom = "disk"
    """``disk``: boots its installed disk once ``ready``; ``network``: diskless, always netboots
    its image (and is upgraded by switching the image its boot script serves)."""

    _unique_macs = field_validator("nics")(lambda v: _unique_macs(v))


class MachineUpdate(Strict):
    """PATCH body. ``labels`` merges (a ``null`` value removes that key, RFC 7386 style); ``nics``
    replaces the whole list; ``bmc: null`` removes the BMC; a missing field is left alone."""

    name: DnsLabel | None = None
    uuid: SmbiosUuid | None = None
    serial: str | None = Field(default=None, max_length=128)
    nics: list[NicIn] | None = Field(default=None, min_length=1, max_length=64)
    labels: dict[str, str | None] | None = None
    phase: Phase | None = None
    bmc: BmcIn | None = None
    hardware: dict[str, Any] | None = None
    fault_reason: str | None = Field(default=None, max_length=1024)
    boot_from: BootFrom | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str | None] | None) -> dict[str, str | None] | None:
        for key, value in (v or {}).items():  # null removes the key, so only its name is checked
            check_label_key(key)
            if value is not None:
                check_label_value(value)
        return v

    _unique_macs = field_validator("nics")(lambda v: _unique_macs(v))


class NicOut(BaseModel):
    mac: str
    name: str | None
    ip: str | None


class PowerRequestOut(BaseModel):
    """The operator's last power or boot-device request and how it ended."""

    kind: str
    action: str
    at: datetime
    operation_id: str
    result: str
    """``queued``, ``running``, ``succeeded`` or ``failed``."""
    error: str | None


class PowerOut(BaseModel):
    last_request: PowerRequestOut | None
    observed: str
    """What the BMC last said; ``unknown`` when it could not be read (see ``error``)."""
    observed_at: datetime | None
    error: str | None
    """Why the last read or power operation could not see the state."""


class MachineOut(BaseModel):
    id: str
    name: str
    uuid: str | None
    serial: str | None
    nics: list[NicOut]
    labels: dict[str, str]
    phase: str
    power: PowerOut
    fault_reason: str | None
    bmc: BmcOut | None
    hardware: dict[str, Any]
    image: str | None
    """The OS image it runs, confirmed (its last good)."""
    boot_from: str
    trial_image: str | None
    """A diskless machine's upgrade in flight: the image its boot script serves until confirmed."""
    created_at: datetime
    updated_at: datetime
    revision: int


class MachinePage(BaseModel):
    items: list[MachineOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: int
    created_at: datetime
    machine_id: str | None
    machine_name: str | None
    actor: str
    kind: str
    message: str
    data: dict[str, Any]


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class TokenCreate(Strict):
    name: DnsLabel
    role: Role


class TokenOut(BaseModel):
    id: str
    name: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str
    """Shown once; only its hash is stored."""
