"""The machine config document: declarative, versioned, validated at the boundary.

One document describes everything the agent makes true on a machine: host name, network (links,
addresses, routes, DNS), kernel arguments, sysctls, files, install disk and data volumes, time
servers. Collections that patches commonly touch one entry of (links, files, volumes) are maps
keyed by name/path rather than lists, because a JSON merge patch (RFC 7386) merges objects key by
key but replaces arrays whole: ``{"network": {"links": {"eth0": {"mtu": 9000}}}}`` then changes one
link's MTU and nothing else. Lists (addresses, routes, nameservers, kernel args) are replaced whole.

Fields whose change only takes effect at boot are listed in :data:`REBOOT_FIELDS`; the agent
uses it to decide whether an ``auto`` apply reboots and a ``no-reboot`` apply fails.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = "bronze.dev/v1alpha1"

# Top-level (or dotted) fields that only take effect at boot.
REBOOT_FIELDS: tuple[str, ...] = ("kernel_args", "install", "volumes")

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_SYSCTL = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_\-]+)+$")
_KARG = re.compile(r"^[^\s\"']+$")
_VOLNAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Link(_Doc):
    """One network link (physical NIC, bond member, VLAN...), keyed by its interface name."""

    mac: str | None = Field(default=None, description="match the link by MAC instead of name")
    mtu: int | None = Field(default=None, ge=576, le=9216)
    dhcp: bool = False
    addresses: list[str] = Field(default_factory=list, description="CIDR addresses")

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", v.lower()):
            raise ValueError("not a MAC address (aa:bb:cc:dd:ee:ff)")
        return v.lower() if v else v

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for a in v:
            ipaddress.ip_interface(a)  # ValueError -> validation error
            if "/" not in a:
                raise ValueError(f"address {a!r} needs a prefix length")
        return v


class Route(_Doc):
    to: str = Field(description="destination network, CIDR, or 'default'")
    via: str | None = None
    link: str | None = None
    metric: int = Field(default=1024, ge=0, le=2**32 - 1)

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        if v != "default":
            ipaddress.ip_network(v, strict=True)
        return v

    @field_validator("via")
    @classmethod
    def _via(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_address(v)
        return v


class Dns(_Doc):
    nameservers: list[str] = Field(default_factory=list)
    search: list[str] = Field(default_factory=list)

    @field_validator("nameservers")
    @classmethod
    def _ns(cls, v: list[str]) -> list[str]:
        for a in v:
            ipaddress.ip_address(a)
        return v


class Network(_Doc):
    links: dict[str, Link] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    dns: Dns = Field(default_factory=Dns)

    @field_validator("links")
    @classmethod
    def _names(cls, v: dict[str, Link]) -> dict[str, Link]:
        for name in v:
            if not _IFNAME.fullmatch(name):
                raise ValueError(f"invalid interface name {name!r}")
        return v


class File(_Doc):
    """A file the agent writes (keyed by absolute path in :attr:`MachineConfig.files`)."""

    content: str = ""
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    owner: Annotated[int, Field(ge=0)] = 0
    group: Annotated[int, Field(ge=0)] = 0


class Install(_Doc):
    disk: str = Field(description="install target, e.g. /dev/nvme0n1 or a by-id path")
    image: str | None = None
    wipe: bool = False

    @field_validator("disk")
    @classmethod
    def _disk(cls, v: str) -> str:
        if not v.startswith("/dev/"):
            raise ValueError("install disk must be a /dev path")
        return v


class Volume(_Doc):
    disk: str
    mount: str
    filesystem: Literal["xfs", "ext4"] = "xfs"
    size: str | None = Field(default=None, description="e.g. '100GiB'; absent = the whole disk")

    @field_validator("mount")
    @classmethod
    def _mount(cls, v: str) -> str:
        return _check_abs_path(v)

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[1-9][0-9]*(B|KiB|MiB|GiB|TiB)", v):
            raise ValueError("size must look like 100GiB")
        return v


class Time(_Doc):
    servers: list[str] = Field(default_factory=list)


def _check_abs_path(p: str) -> str:
    if not p.startswith("/") or "\x00" in p:
        raise ValueError("must be an absolute path")
    if posixpath.normpath(p) != p or "/../" in p + "/" or p.endswith("/"):
        raise ValueError("must be a normalised path (no '..', '//', '.' or trailing '/')")
    return p


class MachineConfig(_Doc):
    """The whole desired configuration of one machine."""

    api_version: Literal["bronze.dev/v1alpha1"] = SCHEMA_VERSION  # type: ignore[assignment]
    hostname: str | None = None
    network: Network = Field(default_factory=Network)
    kernel_args: list[str] = Field(default_factory=list)
    sysctls: dict[str, str] = Field(default_factory=dict)
    files: dict[str, File] = Field(default_factory=dict)
    install: Install | None = None
    volumes: dict[str, Volume] = Field(default_factory=dict)
    time: Time = Field(default_factory=Time)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and not _HOSTNAME.fullmatch(v):
            raise ValueError("not an RFC 1123 host name (lower case letters, digits, '-', '.')")
        return v

    @field_validator("kernel_args")
    @classmethod
    def _kargs(cls, v: list[str]) -> list[str]:
        for a in v:
            if not _KARG.fullmatch(a):
                raise ValueError(f"kernel argument {a!r} contains blanks or quotes")
        return v

    @field_validator("sysctls")
    @classmethod
    def _sysctls(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not _SYSCTL.fullmatch(k):
                raise ValueError(f"invalid sysctl name {k!r}")
            if "\n" in val:
                raise ValueError(f"sysctl {k!r} value contains a newline")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, File]) -> dict[str, File]:
        for path in v:
            _check_abs_path(path)
            if path.startswith(("/proc/", "/sys/", "/dev/")):
                raise ValueError(f"{path}: files under /proc, /sys and /dev are not allowed")
        return v

    @field_validator("volumes")
    @classmethod
    def _volnames(cls, v: dict[str, Volume]) -> dict[str, Volume]:
        for name in v:
            if not _VOLNAME.fullmatch(name):
                raise ValueError(f"invalid volume name {name!r}")
        return v


def json_schema() -> dict[str, object]:
    """The JSON schema of the machine config document (served by the REST API)."""
    return MachineConfig.model_json_schema()
