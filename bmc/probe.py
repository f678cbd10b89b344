"""Find out which protocol a BMC speaks (``driver: auto``).

Two cheap, unauthenticated questions, with short timeouts:

1. **Redfish** (DSP0266 section 6.3): ``GET /redfish/v1/`` is the service root and must be
   readable without credentials; its JSON carries ``RedfishVersion``/``@odata.id``.
   Tried over HTTPS, then HTTP. Certificates are not checked *here* because no secret
   is sent and only the answer's shape matters; the driver that follows verifies TLS.
2. **IPMI** (IPMI v2.0 section 13.14 and 22.13): a sessionless *Get Channel
   Authentication Capabilities* request in an RMCP/IPMI 1.5 frame, plus an ASF
   Presence Ping (RMCP class 6, section 13.2.3); any RMCP answer means IPMI. Some BMCs
   (pyghmi) ignore the ping, all answer the capabilities request.

The result is a :class:`ProbeResult`; :func:`probe` returns only the driver kind.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import httpx

from bmc.errors import BmcConnectionError
from bmc.types import BmcEndpoint, DriverKind

RMCP_HEADER = bytes([0x06, 0x00, 0xFF])
ASF_PING = RMCP_HEADER + bytes([0x06]) + bytes([0x00, 0x00, 0x11, 0xBE, 0x80, 0x00, 0x00, 0x00])


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def get_channel_auth_caps_frame() -> bytes:
    """RMCP + IPMI 1.5 session header (no auth) + Get Channel Authentication Capabilities."""
    header = bytes([0x20, 0x06 << 2])  # rsSA = BMC, NetFn App
    body = bytes([0x81, 0x00, 0x38, 0x8E, 0x04])  # rqSA, seq, cmd, v2 ext + channel E, admin
    msg = header + bytes([_checksum(header)]) + body + bytes([_checksum(body)])
    session = bytes([0x00]) + bytes(4) + bytes(4) + bytes([len(msg)])
    return RMCP_HEADER + bytes([0x07]) + session + msg


@dataclass(frozen=True)
class ProbeResult:
    kind: DriverKind
    port: int
    scheme: str = "https"


def _redfish(address: str, port: int | None, timeout: float) -> ProbeResult | None:
    host = f"[{address}]" if ":" in address else address
    for scheme in ("https", "http"):
        p = port or (443 if scheme == "https" else 80)
        url = f"{scheme}://{host}:{p}/redfish/v1/"
        try:
            # verify=False: nothing secret is sent; trust_env=False: no proxies from env.
            with httpx.Client(
                verify=False,  # noqa: S501 - a probe sends no credentials; it reads the root
                trust_env=False,
                timeout=timeout,
                follow_redirects=False,
            ) as client:
                resp = client.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            continue
        if resp.status_code in (401, 403):
            return ProbeResult(DriverKind.redfish, p, scheme)
        try:
            doc = resp.json()
        except ValueError:
            continue
        if isinstance(doc, dict) and ("RedfishVersion" in doc or "@odata.id" in doc):
            return ProbeResult(DriverKind.redfish, p, scheme)
    return None


def _ipmi(address: str, port: int | None, timeout: float) -> ProbeResult | None:
    p = port or 623
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, p))
            sock.send(ASF_PING)
            sock.send(get_channel_auth_caps_frame())
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = sock.recv(512)
                if data[:3] == RMCP_HEADER:
                    return ProbeResult(DriverKind.ipmi, p, "ipmi")
        except OSError:
            return None
    return None


def probe_details(address: str, port: int | None = None, timeout: float = 1.0) -> ProbeResult:
    """Redfish first, then IPMI. Raises :class:`BmcConnectionError` if neither answers."""
    found = _redfish(address, port, timeout) or _ipmi(address, port, timeout)
    if found is None:
        where = f"{address}:{port}" if port else address
        raise BmcConnectionError(bmc=where, detail="neither Redfish nor IPMI answered a probe")
    return found


def probe(address: str, port: int | None = None, timeout: float = 1.0) -> DriverKind:
    """Which driver speaks to the BMC at ``address`` (``port``: the one to try)."""
    return probe_details(address, port, timeout).kind


def resolve_auto(endpoint: BmcEndpoint, timeout: float = 1.0) -> BmcEndpoint:
    """A copy of an ``auto`` endpoint with driver, port and scheme filled in by probing."""
    if endpoint.driver != DriverKind.auto:
        return endpoint
    found = probe_details(endpoint.address, endpoint.port, timeout)
    scheme = found.scheme if found.kind == DriverKind.redfish else endpoint.scheme
    from dataclasses import replace

    return replace(endpoint, driver=found.kind, port=found.port, scheme=scheme)
