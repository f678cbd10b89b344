"""The HTTP layer under sushy for Redfish (DMTF DSP0266): one origin, one attempt, no env.

A Redfish client authenticates with a session token (``X-Auth-Token``, DSP0266 section 13.3)
or HTTP Basic; either is a plain header that requests would carry along a redirect. This
module holds what :mod:`bmc.redfish` plugs into sushy so that the driver's guarantees hold:

- :class:`GuardedSession` ignores the environment (``trust_env = False``: otherwise
  ``REQUESTS_CA_BUNDLE`` silently overrides ``verify``, and proxies / ``.netrc`` apply) and
  refuses a redirect to another scheme/host/port by raising :class:`_RedirectRefused` before any
  request is sent there (the driver turns it into :class:`~bmc.errors.BmcRedirectRefused`).
- :class:`OneShotConnector` is sushy's connector with that session and exactly one attempt per
  request (sushy retries connection errors three times and 5xx GETs ten times), so that retry
  policy stays in :mod:`bmc.actions`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from sushy import connector as sushy_connector

from bmc.driver import DriverTimeouts


class _RedirectRefused(Exception):
    """Raised inside the HTTP session; not a requests error, so sushy lets it through."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or default)


class GuardedSession(requests.Session):
    """A requests session that ignores the environment and stays on one origin."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # REQUESTS_CA_BUNDLE / *_PROXY / .netrc must not apply
        self.max_redirects = 5

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target is not None:
            absolute = urljoin(resp.url, target)
            if _origin(absolute) != _origin(resp.url):
                raise _RedirectRefused(absolute)
        return target


class OneShotConnector(sushy_connector.Connector):
    """sushy's connector with one attempt per request and our guarded session."""

    def __init__(self, url: str, verify: bool | str, timeouts: DriverTimeouts) -> None:
        super().__init__(
            url,
            verify=verify,
            server_side_retries=1,  # sushy: "retries or 3" -> one connection attempt
            server_side_retries_delay=0,
            default_request_timeout=timeouts.read,
            connect_timeout=timeouts.connect,
        )
        self._session.close()
        self._session: requests.Session = GuardedSession()
        self._session.headers["Connection"] = "close"

    def _op(
        self,
        method: str,
        path: str = "",
        data: Any = None,
        headers: Any = None,
        blocking: bool = False,
        timeout: Any = None,
        server_side_retries_left: Any = None,
        allow_reauth: bool = True,
        **kwargs: Any,
    ) -> Any:
        # No 5xx replays inside sushy: the policy layer decides about retries.
        return super()._op(
            method,
            path,
            data=data,
            headers=headers,
            blocking=blocking,
            timeout=timeout,
            server_side_retries_left=0,
            allow_reauth=allow_reauth,
            **kwargs,
        )
