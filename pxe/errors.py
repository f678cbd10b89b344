"""Errors of the boot plane.

One root (`PxeError`); `PxeFatalError` is never retried (configuration, unsafe input),
`PxeTransientError` may be retried (the backend timed out, a socket was busy).
"""

from __future__ import annotations


class PxeError(Exception):
    """Root of every error raised by `pxe`."""


class PxeFatalError(PxeError):
    """Configuration or input error: retrying cannot help."""


class PxeTransientError(PxeError):
    """A peer (the bronze server, a socket) failed for now: retrying may help."""


class MalformedPacket(PxeFatalError):  # noqa: N818 - the name the protocol docs use
    """A DHCP datagram that does not parse. The only error the codec ever raises."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed DHCP packet: {reason}")
        self.reason = reason


class UnsafeValue(PxeFatalError):  # noqa: N818
    """A value that would change the meaning of an iPXE script if rendered into it."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        super().__init__(f"unsafe value for {field}: {reason} ({value!r:.80})")
        self.field = field
        self.reason = reason


class BackendError(PxeTransientError):
    """The boot backend (the central bronze server) did not answer usefully."""
