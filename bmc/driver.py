"""The ``PowerDriver`` protocol: one BMC, one call per method, no policy.

A driver translates one bronze request into one protocol exchange and the answer back
into bronze's vocabulary (:mod:`bmc.types`) or a :class:`bmc.errors.BmcError`. It does
not retry, wait for a state to settle or serialize callers: that policy lives in one
place, :mod:`bmc.actions` (the split MAAS makes between ``on()`` and ``power_on()``).

Drivers are blocking (sushy and python-ipmi are) and every network call they make has
a timeout. A driver may connect lazily on its first call and must be closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bmc.types import BmcEndpoint, BootDevice, BootSetting, PowerState


@dataclass(frozen=True)
class DriverTimeouts:
    """Per-request network timeouts a driver applies (seconds)."""

    connect: float = 3.0
    """TCP connect (Redfish) / one UDP round trip (IPMI)."""
    read: float = 10.0
    """Waiting for an HTTP response (Redfish)."""


@runtime_checkable
class PowerDriver(Protocol):
    """One BMC. Each method is one BMC call (one request/response, plus session setup)."""

    def get_power_state(self) -> PowerState:
        """Read the power state; ``PowerState.unknown`` for transitional states."""
        ...

    def power_on(self) -> None:
        """Ask for power on."""
        ...

    def power_off(self, graceful: bool) -> None:
        """Ask for power off: ``graceful`` asks the OS (ACPI), otherwise cut power."""
        ...

    def power_cycle(self) -> None:
        """Ask for off-then-on."""
        ...

    def reset(self) -> None:
        """Ask for a hard reset."""
        ...

    def set_boot_device(self, device: BootDevice, persistent: bool, uefi: bool) -> None:
        """Set the boot override: once (``persistent=False``) or for every boot."""
        ...

    def get_boot_device(self) -> BootSetting:
        """Read the boot override back."""
        ...

    def close(self) -> None:
        """Release the session/socket. Never raises."""
        ...


DriverFactory = Callable[[BmcEndpoint], PowerDriver]
"""Builds a driver for an endpoint without doing any I/O."""


@runtime_checkable
class AsyncPowerDriver(Protocol):
    """A driver whose power commands also run on the event loop (:mod:`bmc.aoperation`): the
    session is opened by the awaited :meth:`open_session_async`, then each command is one
    awaited exchange; no thread. Errors as :class:`PowerDriver`'s."""

    def needs_session(self) -> bool:
        """No session yet (or it was dropped): await :meth:`open_session_async` first."""
        ...

    async def open_session_async(self) -> None:
        """Open the session (the handshake's round trips awaited on the loop)."""
        ...

    def detach_loop(self) -> None:
        """The operation on the loop ends: the session's socket leaves the loop's selector (it
        stays there between the exchanges of one operation). Called on the loop's thread."""
        ...

    async def get_power_state_async(self) -> PowerState: ...

    async def power_on_async(self) -> None: ...

    async def power_off_async(self, graceful: bool) -> None: ...

    async def power_cycle_async(self) -> None: ...

    async def reset_async(self) -> None: ...

    def close(self) -> None: ...
