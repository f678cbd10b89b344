"""Which BMC addresses bronze is willing to talk to.

A BMC address comes from an operator (or an import), and bronze then sends it
credentials and power commands. Unchecked, that field turns the server into a request
forwarder: ``169.254.169.254`` is a cloud metadata service, ``127.0.0.1:8000`` is
bronze's own API, a ``user:pass@host`` or ``http://`` form smuggles parts of a URL.
So an address must be a bare ``host`` or ``host:port`` (``[v6]:port`` for IPv6), and
every IP it names (a host name: every address it resolves to, RFC 6724 gives no
guarantee which one a client will pick) must fall inside the configured management
networks and outside the always-refused ranges (loopback, link-local, unspecified,
multicast, the API's own addresses), unless a network that contains it is listed
explicitly in ``allow``.

The port is checked too: ``127.0.0.1:22`` or a management host's SSH port is not a BMC, and
bronze's own API port on a loopback address allowed for emulators would make bronze send
Redfish requests (with credentials) to itself. A port must be inside ``ports`` (ranges; the
server's default covers the standard BMC ports 80, 443, 623 and the emulators' usual ranges) and
is never one of ``own_ports``, bronze's own listeners (API, agent enrollment and session), on
any host: the policy cannot know every name the server answers to, and refusing a BMC on 7443
costs less than one loop back into bronze.

:func:`check_address` is a pure function of its inputs (the resolver is injected).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bmc.errors import BmcAddressRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Sequence[str]]

DEFAULT_NETWORKS: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8")
ALWAYS_REFUSED: tuple[str, ...] = (
    "127.0.0.0/8",
    "::1/128",  # loopback
    "169.254.0.0/16",
    "fe80::/10",  # link-local, incl. 169.254.169.254 metadata
    "0.0.0.0/8",
    "::/128",  # unspecified
    "224.0.0.0/4",
    "ff00::/8",  # multicast
    "255.255.255.255/32",
)
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
PortRange = tuple[int, int]
DEFAULT_PORTS: tuple[str, ...] = ("80", "443", "623", "6230-6299", "8000-8999", "16000-16999")
"""Standard BMC ports (Redfish 443/80, IPMI 623, 8443 and other vendor HTTPS ports in
8000-8999) and the emulators' usual ones (VirtualBMC 6230+, sushy-emulator 8000)."""


def parse_ports(items: Iterable[str]) -> tuple[PortRange, ...]:
    """``["443", "8000-8999"]`` -> ``((443, 443), (8000, 8999))``; ValueError when malformed."""
    out: list[PortRange] = []
    for item in items:
        text = item.strip()
        lo_text, sep, hi_text = text.partition("-")
        if not lo_text.isdigit() or (sep and not hi_text.isdigit()):
            raise ValueError(f"{text!r} is not a port or a port range (443, 8000-8999)")
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"{text!r} is not inside 1-65535 (low end first)")
        out.append((lo, hi))
    return tuple(out)


@dataclass(frozen=True)
class NetPolicy:
    """Where BMCs may live.

    ``networks``: management CIDRs a BMC address must fall in. ``allow``: CIDRs that
    override the always-refused list (e.g. ``127.0.0.1/32`` in a lab). ``own``: the
    API's own addresses, refused unless inside ``allow``. ``ports``: the port ranges a BMC may
    use (``None``: any). ``own_ports``: bronze's own listeners, ``{port: what}``, always refused.
    """

    networks: tuple[str, ...] = DEFAULT_NETWORKS
    allow: tuple[str, ...] = ()
    own: tuple[str, ...] = ()
    ports: tuple[PortRange, ...] | None = None
    own_ports: tuple[tuple[int, str], ...] = ()
    _nets: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    _allow: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    _refused: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in self.networks)
        allow = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow)
        refused = tuple(ipaddress.ip_network(n) for n in ALWAYS_REFUSED) + tuple(
            ipaddress.ip_network(n, strict=False) for n in self.own
        )
        object.__setattr__(self, "_nets", nets)
        object.__setattr__(self, "_allow", allow)
        object.__setattr__(self, "_refused", refused)


@dataclass(frozen=True)
class CheckedAddress:
    """A BMC address that passed the policy."""

    host: str
    port: int | None
    addresses: tuple[str, ...]


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``v4:port``, ``v6`` or ``[v6]:port`` -> (host, port).

    Raises :class:`BmcAddressRefused` for anything else (scheme, path, userinfo,
    whitespace, empty parts, bad port).
    """
    raw = text
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise BmcAddressRefused(address=raw, reason="empty or contains whitespace")
    for bad, what in (
        ("://", "a scheme"),
        ("/", "a path"),
        ("@", "userinfo"),
        ("?", "a query"),
        ("#", "a fragment"),
        ("\\", "a backslash"),
        ("%", "a zone or escape"),
    ):
        if bad in text:
            raise BmcAddressRefused(address=raw, reason=f"contains {what}")
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BmcAddressRefused(address=raw, reason="unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise BmcAddressRefused(address=raw, reason="junk after ']'")
            port = _port(rest[1:], raw)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BmcAddressRefused(address=raw, reason="not an IPv6 literal in []") from None
        return host, port
    if text.count(":") > 1:  # bare IPv6 without a port
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise BmcAddressRefused(address=raw, reason="not an IPv6 address") from None
        return text, None
    host, sep, port_text = text.partition(":")
    if sep:
        port = _port(port_text, raw)
    if not host:
        raise BmcAddressRefused(address=raw, reason="empty host")
    if not _is_ip(host):
        lowered = host.lower()
        labels = lowered.rstrip(".").split(".")
        if (
            not set(lowered) <= _HOST_CHARS
            or any(not lb or len(lb) > 63 for lb in labels)
            or any(lb.startswith("-") or lb.endswith("-") for lb in labels)
            or len(lowered) > 253
        ):
            raise BmcAddressRefused(address=raw, reason="not a valid host name")
        if labels[-1].isdigit():
            raise BmcAddressRefused(address=raw, reason="not a valid IPv4 address")
    return host, port


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BmcAddressRefused(address=raw, reason="port must be 1-65535")
    return int(text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def system_resolver(host: str) -> Sequence[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


def _in(ip: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


def check_ip(ip_text: str, policy: NetPolicy) -> str | None:
    """Why ``ip_text`` is refused, or ``None`` if allowed."""
    ip = ipaddress.ip_address(ip_text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if _in(ip, policy._allow):
        return None
    if _in(ip, policy._refused):
        return f"{ip} is loopback, link-local, multicast, unspecified or bronze's own"
    if not _in(ip, policy._nets):
        return f"{ip} is outside the management networks"
    return None


def check_port(port: int, policy: NetPolicy) -> str | None:
    """Why ``port`` is refused, or ``None`` if allowed."""
    for own, what in policy.own_ports:
        if port == own:
            return f"port {port} is bronze's own {what}"
    if policy.ports is not None and not any(lo <= port <= hi for lo, hi in policy.ports):
        allowed = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in policy.ports)
        return f"port {port} is not a BMC port (allowed: {allowed}; BRONZE_BMC_PORTS)"
    return None


def check_address(
    text: str,
    policy: NetPolicy | None = None,
    resolver: Resolver = system_resolver,
    *,
    port: int | None = None,
) -> CheckedAddress:
    """Validate a BMC address; raise :class:`BmcAddressRefused` with the reason. ``port`` is the
    port used when ``text`` names none (the endpoint's port, or its driver's default)."""
    policy = policy or NetPolicy()
    host, named = split_host_port(text)
    if _is_ip(host):
        addresses: Sequence[str] = [host]
    else:
        try:
            addresses = resolver(host)
        except OSError as exc:
            raise BmcAddressRefused(address=text, reason=f"does not resolve ({exc})") from None
        if not addresses:
            raise BmcAddressRefused(address=text, reason="resolves to nothing")
    for ip in addresses:
        reason = check_ip(ip, policy)
        if reason is not None:
            raise BmcAddressRefused(address=text, reason=reason)
    effective = named if named is not None else port
    if effective is not None:
        why = check_port(effective, policy)
        if why is not None:
            raise BmcAddressRefused(address=text, reason=why)
    return CheckedAddress(host=host, port=named, addresses=tuple(addresses))
