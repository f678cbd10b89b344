"""Which BMC addresses the server accepts: the settings side of :mod:`bmc.netpolicy`.

The management networks (``BRONZE_BMC_NETWORKS``) and BMC ports (``BRONZE_BMC_PORTS``) come from
settings; bronze's own API address and its own listeners (API port, agent enrollment and
session ports; the boot plane's HTTP is the API port) are always refused, so a BMC address can
never make bronze send Redfish requests with credentials to itself. The same policy is checked
when an address is stored (422 naming the reason) and again before every BMC call.
"""

from __future__ import annotations

import ipaddress

from bmc import BmcError, DriverKind, NetPolicy, check_address
from bmc.netpolicy import ALWAYS_REFUSED, parse_ports
from bmc.types import DEFAULT_PORTS
from server.errors import Invalid
from server.settings import ServerSettings


def own_ports(settings: ServerSettings) -> tuple[tuple[int, str], ...]:
    """bronze's own listeners, ``(port, what)``."""
    return (
        (settings.api_port, "API port (and boot-plane HTTP)"),
        (settings.agent_enroll_port, "agent enrollment port"),
        (settings.agent_session_port, "agent session port"),
    )


def net_policy(settings: ServerSettings) -> NetPolicy:
    """BMC networks and ports from settings. A listed network inside an always-refused range
    (loopback, link-local) is an explicit opt-in for it; the API's own address is refused
    unless listed."""
    refused = [ipaddress.ip_network(n) for n in ALWAYS_REFUSED]
    listed = [ipaddress.ip_network(n, strict=False) for n in settings.bmc_networks]
    allow = tuple(
        str(n)
        for n in listed
        if any(n.version == r.version and n.subnet_of(r) for r in refused)  # type: ignore[arg-type]
    )
    own: tuple[str, ...] = ()
    try:
        ipaddress.ip_address(settings.api_host)
        own = (settings.api_host,)
    except ValueError:
        pass
    return NetPolicy(
        networks=tuple(settings.bmc_networks),
        allow=allow,
        own=own,
        ports=parse_ports(settings.bmc_ports),
        own_ports=tuple(p for p in own_ports(settings) if p[0] > 0),
    )


def checked_bmc_address(
    settings: ServerSettings,
    address: str,
    port: int | None,
    driver: DriverKind = DriverKind.auto,
    scheme: str = "https",
) -> tuple[str, int | None]:
    """Validate ``host[:port]`` (and ``port``, else the driver's default port) against the BMC
    networks and ports; 422 with the reason when refused."""
    default_port = (
        80 if driver == DriverKind.redfish and scheme == "http" else DEFAULT_PORTS.get(driver)
    )
    try:
        checked = check_address(
            address, net_policy(settings), port=port if port is not None else default_port
        )
    except BmcError as exc:
        raise Invalid(message=str(exc), details={"field": "bmc.address"}) from None
    if checked.port is not None and port is not None and checked.port != port:
        raise Invalid(
            message="BMC port given twice with different values", details={"field": "bmc.port"}
        )
    return checked.host, checked.port if checked.port is not None else port
