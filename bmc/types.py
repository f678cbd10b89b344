"""The power plane's vocabulary: states, actions, boot devices and BMC endpoints.

A baseboard management controller (BMC) is a small computer on the server's board that
stays powered while the host is off. It speaks one of two management protocols:

- **Redfish** (DMTF DSP0266): JSON over HTTPS. A ``ComputerSystem`` resource carries
  ``PowerState`` and a ``Boot`` object; power changes are the ``ComputerSystem.Reset``
  action with a ``ResetType`` (``On``, ``ForceOff``, ``GracefulShutdown``,
  ``ForceRestart``, ``PowerCycle``).
- **IPMI 2.0** (Intel IPMI v2.0 rev. 1.1): binary messages over UDP port 623 inside
  RMCP+ sessions. Chassis commands (section 28): Get Chassis Status (power on bit),
  Chassis Control (0 power down, 1 power up, 2 power cycle, 3 hard reset, 5 soft
  shutdown), Set/Get System Boot Options parameter 5 "boot flags" (device, persistent,
  EFI bits).

Everything bronze says about power uses the enums below, never library constants or
bare strings. ``BmcEndpoint`` is the value that names one BMC and how to talk to it;
its password is a :class:`Secret` that never prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class PowerState(StrEnum):
    """The host's power as the BMC reports it."""

    on = "on"
    """The host is powered (Redfish ``On``; IPMI chassis status power-is-on bit set)."""
    off = "off"
    """The host is powered off (Redfish ``Off``; IPMI power bit clear)."""
    unknown = "unknown"
    """Not known: the BMC did not answer, or reports a transition (``PoweringOn``).

    Never replaced by a guess such as the last known state."""


class PowerAction(StrEnum):
    """A power command bronze can ask a BMC to carry out."""

    on = "on"
    """Power the host on (Redfish ``On``; IPMI Chassis Control 1, power up)."""
    off = "off"
    """Cut power immediately (Redfish ``ForceOff``; IPMI Chassis Control 0, power down)."""
    soft_off = "soft-off"
    """Ask the OS to shut down (Redfish ``GracefulShutdown``; IPMI Chassis Control 5, ACPI
    soft shutdown). Succeeds only if the OS cooperates within the settle timeout."""
    cycle = "cycle"
    """Off then on (Redfish ``PowerCycle`` or ``ForceRestart``; IPMI Chassis Control 2).
    From off it powers on. Ends on."""
    reset = "reset"
    """Hard reset without removing power (Redfish ``ForceRestart``; IPMI Chassis Control 3).
    From off it powers on. Ends on."""

    @property
    def target(self) -> PowerState:
        """The state the host is in once the action has settled."""
        if self in (PowerAction.off, PowerAction.soft_off):
            return PowerState.off
        return PowerState.on


class BootDevice(StrEnum):
    """Where the host boots from next (a boot override, not the firmware boot order)."""

    pxe = "pxe"
    """Network boot (Redfish ``Pxe``; IPMI boot flags device 0001b, force PXE)."""
    disk = "disk"
    """The default hard disk (Redfish ``Hdd``; IPMI device 0010b)."""
    bios = "bios"
    """Firmware setup (Redfish ``BiosSetup``; IPMI device 0110b)."""
    cdrom = "cdrom"
    """CD/DVD or virtual media (Redfish ``Cd``; IPMI device 0101b)."""


class DriverKind(StrEnum):
    """Which protocol bronze speaks to a BMC."""

    redfish = "redfish"
    """Redfish over HTTPS (or HTTP when the endpoint says so), via sushy."""
    ipmi = "ipmi"
    """IPMI 2.0 RMCP+ over UDP, via python-ipmi's native ``rmcpplus`` interface."""
    auto = "auto"
    """Decide by probing the address (:func:`bmc.probe.probe`): Redfish first, then IPMI."""


class SupportsSecret(Protocol):
    """Anything with pydantic's ``SecretStr`` shape."""

    def get_secret_value(self) -> str: ...


class Secret:
    """A string that never shows itself in ``repr``, ``str``, f-strings or logs.

    Compatible with pydantic's ``SecretStr`` (``get_secret_value()``); unwrap only at
    the call that hands the password to a protocol library.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str | SupportsSecret) -> None:
        if not isinstance(value, str):
            value = value.get_secret_value()
        object.__setattr__(self, "_value", value)

    def get_secret_value(self) -> str:
        """The secret itself. Call only where a library needs it."""
        return self._value

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __format__(self, spec: str) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret refuses to be pickled")


DEFAULT_PORTS = {DriverKind.redfish: 443, DriverKind.ipmi: 623}


@dataclass(frozen=True)
class BmcEndpoint:
    """How to reach one BMC. A value: hashable, immutable, safe to print.

    ``address`` is a host name or IP literal (no scheme, no port: see
    :mod:`bmc.netpolicy`). ``port`` ``None`` means the protocol default (443 for
    Redfish over HTTPS, 623 for IPMI). ``ca_bundle`` is PEM text trusted for this
    BMC only. ``system_id`` names the Redfish ``ComputerSystem`` (``None``: the only
    one). ``scheme`` is ``https`` unless a lab endpoint explicitly says ``http``.
    """

    driver: DriverKind
    address: str
    port: int | None = None
    username: str = ""
    password: Secret = dataclasses.field(default_factory=lambda: Secret(""), repr=False)
    verify_tls: bool = True
    ca_bundle: str | None = dataclasses.field(default=None, repr=False)
    system_id: str | None = None
    scheme: str = "https"

    def __post_init__(self) -> None:
        object.__setattr__(self, "driver", DriverKind(self.driver))
        if not isinstance(self.password, Secret):
            object.__setattr__(self, "password", Secret(self.password))
        if self.scheme not in ("https", "http"):
            raise ValueError("scheme must be 'https' or 'http'")

    @property
    def key(self) -> str:
        """``address:port``: the identity used for per-BMC serialization and logs."""
        port = self.port
        if port is None:
            port = (
                80
                if (self.driver == DriverKind.redfish and self.scheme == "http")
                else DEFAULT_PORTS.get(self.driver, 0)
            )
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{port}"

    def __str__(self) -> str:
        return f"{self.driver.value}://{self.key}"


@dataclass(frozen=True)
class BootSetting:
    """A boot override as read back from a BMC (fields ``None`` when not reported)."""

    device: BootDevice | None
    persistent: bool | None = None
    uefi: bool | None = None
