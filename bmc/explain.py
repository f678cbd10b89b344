"""Operator sentences for BMC failures.

A :class:`~bmc.errors.BmcError` carries the library's own words in its ``detail`` field
(``RetryError: Max retry while sending and/or receiving ipmimessage for rmcp host``): useful in
a debug log, useless to an operator, who needs to know what the BMC did and how hard bronze
tried. :func:`describe` turns an error plus the attempts and time spent into one sentence built
from our own templates only ("BMC 10.0.0.12:623 did not answer (4 tries in 16 s)"). The server
stores and shows that sentence; the library detail stays in the logs at DEBUG.
"""

from __future__ import annotations

from bmc.errors import (
    BmcAuthError,
    BmcBusyError,
    BmcConnectionError,
    BmcDeadlineExceeded,
    BmcError,
    BmcServerError,
    BmcTimeoutError,
)


def _effort(attempts: int, elapsed: float) -> str:
    tries = "1 try" if attempts == 1 else f"{attempts} tries"
    seconds = f"{elapsed:.1f}" if elapsed < 10 else f"{elapsed:.0f}"
    return f"{tries} in {seconds} s"


def describe(error: BmcError, attempts: int, elapsed: float, bmc: str | None = None) -> str:
    """One sentence for an operator: what the BMC (``address:port``) did, how hard bronze tried."""
    cause = error.fields.get("cause", error) if isinstance(error, BmcDeadlineExceeded) else error
    bmc = bmc or error.fields.get("bmc", "?")
    effort = _effort(max(attempts, 1), elapsed)
    if isinstance(cause, BmcTimeoutError):
        return f"BMC {bmc} did not answer ({effort})"
    if isinstance(cause, BmcConnectionError):
        return f"BMC {bmc} refused or dropped the connection ({effort})"
    if isinstance(cause, BmcBusyError):
        return f"BMC {bmc} stayed busy ({effort})"
    if isinstance(cause, BmcServerError):
        status = cause.fields.get("status", "5xx")
        return f"BMC {bmc} kept answering HTTP {status} ({effort})"
    if isinstance(cause, BmcAuthError):
        user = cause.fields.get("user", "")
        return f"BMC {bmc} rejected the credentials of user {user!r} (authentication failed)"
    return str(error)
