"""Errors of the power plane, split by what the caller should do next.

``BmcFatalError`` means "asking again will not help": wrong credentials, a bad
endpoint, an operation the BMC does not support, a redirect to another host, a TLS
certificate that does not verify. The policy in :mod:`bmc.actions` never retries it.

``BmcTransientError`` means "the BMC or the path to it is having a bad moment":
timeouts, refused connections, a busy BMC, HTTP 5xx. The policy retries it with
backoff until the operation's deadline.

Every message is a template filled from named fields (``err.fields``); none of them
ever holds a password. Drivers scrub library messages before putting them in a field
(:func:`scrub`). ``http_status`` is what the REST layer answers when the error
reaches an API client.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BmcError(Exception):
    """Root of every power-plane error."""

    template: ClassVar[str] = "BMC {bmc}: {detail}"
    http_status: ClassVar[int] = 502
    retryable: ClassVar[bool] = False

    def __init__(self, **fields: Any) -> None:
        fields.setdefault("bmc", "?")
        fields.setdefault("detail", "")
        self.fields = fields
        super().__init__(self.template.format(**fields))

    @property
    def message(self) -> str:
        return str(self)


class BmcFatalError(BmcError):
    """Asking again will not help (auth, config, unsupported). Never retried."""


class BmcTransientError(BmcError):
    """May succeed if asked again later (timeouts, refused, busy, 5xx). Retried."""

    retryable = True


# -- fatal ------------------------------------------------------------------------------


class BmcAuthError(BmcFatalError):
    template = "BMC {bmc} rejected the credentials of user {user!r}: {detail}"
    http_status = 502


class BmcConfigError(BmcFatalError):
    template = "BMC endpoint {bmc} is misconfigured: {detail}"
    http_status = 422


class BmcAddressRefused(BmcConfigError):
    template = "BMC address {address!r} refused: {reason}"


class BmcUnsupportedError(BmcFatalError):
    template = "BMC {bmc} does not support {operation}: {detail}"
    http_status = 501


class BmcTlsError(BmcFatalError):
    template = "TLS to BMC {bmc} failed verification: {detail}"


class BmcRedirectRefused(BmcFatalError):
    template = "BMC {bmc} redirected to another origin {target!r}; not followed"


class BmcProtocolError(BmcFatalError):
    template = "BMC {bmc} answered with something bronze cannot use: {detail}"


# -- transient --------------------------------------------------------------------------


class BmcConnectionError(BmcTransientError):
    template = "cannot reach BMC {bmc}: {detail}"


class BmcTimeoutError(BmcTransientError):
    template = "BMC {bmc} did not answer within {seconds:.1f}s: {detail}"
    http_status = 504

    def __init__(self, **fields: Any) -> None:
        fields.setdefault("seconds", 0.0)
        super().__init__(**fields)


class BmcBusyError(BmcTransientError):
    template = "BMC {bmc} is busy: {detail}"
    http_status = 503


class BmcServerError(BmcTransientError):
    template = "BMC {bmc} answered HTTP {status}: {detail}"


class BmcVerifyTimeout(BmcTransientError):
    template = (
        "BMC {bmc} accepted {action} but the power state did not become {expected} "
        "within {seconds:.1f}s (last read: {observed})"
    )
    http_status = 504


class BmcDeadlineExceeded(BmcTransientError):
    template = (
        "{operation} on BMC {bmc} gave up after {attempts} attempt(s) in {seconds:.1f}s: {last}"
    )
    http_status = 504


def scrub(text: object, *secrets: str | None) -> str:
    """``str(text)`` with every non-empty secret replaced by ``***``."""
    out = str(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out
