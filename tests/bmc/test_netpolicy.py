"""BMC address policy: a pure function, tested with a table."""

from __future__ import annotations

import pytest

from bmc import BmcAddressRefused, NetPolicy, check_address
from bmc.netpolicy import split_host_port

DNS = {
    "bmc1.lab": ["10.1.2.3"],
    "dual.lab": ["10.1.2.4", "fd00::4"],
    "sneaky.lab": ["10.1.2.5", "169.254.169.254"],
    "loop.lab": ["127.0.0.1"],
    "public.lab": ["8.8.8.8"],
}


def resolver(host: str) -> list[str]:
    if host not in DNS:
        raise OSError("NXDOMAIN")
    return DNS[host]


DEFAULT = NetPolicy()
LAB = NetPolicy(allow=("127.0.0.1/32",))
OWN = NetPolicy(own=("10.0.0.1",))

ACCEPTED = [
    ("10.0.0.5", DEFAULT, ("10.0.0.5", None)),
    ("10.0.0.5:623", DEFAULT, ("10.0.0.5", 623)),
    ("172.16.9.9:443", DEFAULT, ("172.16.9.9", 443)),
    ("192.168.1.1", DEFAULT, ("192.168.1.1", None)),
    ("fd00::1", DEFAULT, ("fd00::1", None)),
    ("[fd00::1]:8443", DEFAULT, ("fd00::1", 8443)),
    ("bmc1.lab", DEFAULT, ("bmc1.lab", None)),
    ("bmc1.lab:623", DEFAULT, ("bmc1.lab", 623)),
    ("dual.lab", DEFAULT, ("dual.lab", None)),
    ("127.0.0.1:6230", LAB, ("127.0.0.1", 6230)),
    ("10.0.0.2", OWN, ("10.0.0.2", None)),
]

REFUSED = [
    ("", DEFAULT, "empty"),
    (" 10.0.0.5", DEFAULT, "whitespace"),
    ("10.0.0.5 ", DEFAULT, "whitespace"),
    ("10.0.0.5\n", DEFAULT, "whitespace"),
    ("https://10.0.0.5", DEFAULT, "scheme"),
    ("10.0.0.5/redfish", DEFAULT, "path"),
    ("admin:pw@10.0.0.5", DEFAULT, "userinfo"),
    ("10.0.0.5?x=1", DEFAULT, "query"),
    ("10.0.0.5#x", DEFAULT, "fragment"),
    ("10.0.0.5:0", DEFAULT, "port"),
    ("10.0.0.5:65536", DEFAULT, "port"),
    ("10.0.0.5:abc", DEFAULT, "port"),
    ("10.0.0.5:", DEFAULT, "port"),
    (":623", DEFAULT, "empty host"),
    ("[fd00::1", DEFAULT, "unclosed"),
    ("[10.0.0.1]:623", DEFAULT, "IPv6"),
    ("fe80::1%eth0", DEFAULT, "zone"),
    ("127.0.0.1", DEFAULT, "loopback"),
    ("::1", DEFAULT, "loopback"),
    ("169.254.169.254", DEFAULT, "link-local"),
    ("fe80::1", DEFAULT, "link-local"),
    ("0.0.0.0", DEFAULT, "unspecified"),  # noqa: S104 - a refused input, not a bind
    ("224.0.0.1", DEFAULT, "multicast"),
    ("::ffff:127.0.0.1", DEFAULT, "loopback"),
    ("8.8.8.8", DEFAULT, "outside"),
    ("100.64.0.1", DEFAULT, "outside"),
    ("10.0.0.1", OWN, "own"),
    ("sneaky.lab", DEFAULT, "link-local"),
    ("loop.lab", DEFAULT, "loopback"),
    ("public.lab", DEFAULT, "outside"),
    ("nxdomain.lab", DEFAULT, "resolve"),
    ("bad_host.lab", DEFAULT, "host name"),
    ("-bad.lab", DEFAULT, "host name"),
    ("10.0.0.256", DEFAULT, "IPv4"),
    ("1.2.3", DEFAULT, "IPv4"),
]


@pytest.mark.parametrize(("text", "policy", "expected"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(text: str, policy: NetPolicy, expected: tuple[str, int | None]) -> None:
    checked = check_address(text, policy, resolver)
    assert (checked.host, checked.port) == expected
    assert checked.addresses


@pytest.mark.parametrize(
    ("text", "policy", "reason"), REFUSED, ids=[r[0] or "empty" for r in REFUSED]
)
def test_refused(text: str, policy: NetPolicy, reason: str) -> None:
    with pytest.raises(BmcAddressRefused) as info:
        check_address(text, policy, resolver)
    assert reason.lower() in str(info.value).lower()


def test_allow_overrides_refused_ranges_only_where_listed() -> None:
    policy = NetPolicy(networks=("10.0.0.0/8",), allow=("169.254.10.0/24",))
    assert check_address("169.254.10.7", policy, resolver)
    with pytest.raises(BmcAddressRefused):
        check_address("169.254.169.254", policy, resolver)


def test_split_host_port_bare_ipv6() -> None:
    assert split_host_port("fd00::1") == ("fd00::1", None)
