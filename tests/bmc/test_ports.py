"""BMC port policy (``NetPolicy.ports`` / ``own_ports``): a pure function, tested with a table."""

from __future__ import annotations

import pytest

from bmc import BmcAddressRefused, NetPolicy, check_address
from bmc.netpolicy import DEFAULT_PORTS, check_port, parse_ports

PORTS = NetPolicy(
    allow=("127.0.0.0/8",),
    ports=parse_ports(DEFAULT_PORTS),
    own_ports=((8080, "API port"), (7443, "agent enrollment port")),
)
ANY = NetPolicy(allow=("127.0.0.0/8",), ports=None, own_ports=((8080, "API port"),))

CASES = [
    # (address, port given apart, policy, refusal or None)
    ("10.0.0.5:623", None, PORTS, None),
    ("10.0.0.5:443", None, PORTS, None),
    ("10.0.0.5:80", None, PORTS, None),
    ("10.0.0.5:8443", None, PORTS, None),
    ("127.0.0.1:6230", None, PORTS, None),
    ("127.0.0.1:16001", None, PORTS, None),
    ("10.0.0.5", None, PORTS, None),  # driver default: not checked here
    ("10.0.0.5", 623, PORTS, None),
    ("10.0.0.5:22", None, PORTS, "port 22 is not a BMC port"),
    ("127.0.0.1:22", None, PORTS, "port 22 is not a BMC port"),
    ("10.0.0.5", 22, PORTS, "port 22 is not a BMC port"),
    ("10.0.0.5:5432", None, PORTS, "port 5432 is not a BMC port"),
    ("127.0.0.1:8080", None, PORTS, "port 8080 is bronze's own API port"),
    ("10.0.0.5:7443", None, PORTS, "port 7443 is bronze's own agent enrollment port"),
    ("127.0.0.1:22", None, ANY, None),
    ("127.0.0.1:8080", None, ANY, "port 8080 is bronze's own API port"),
    ("127.0.0.1", 8080, ANY, "port 8080 is bronze's own API port"),
    ("8.8.8.8:22", None, PORTS, "outside the management networks"),  # the address speaks first
]


@pytest.mark.parametrize(
    "address,port,policy,refusal", CASES, ids=[f"{a}|{p}|{r}" for a, p, _, r in CASES]
)
def test_port_policy(
    address: str, port: int | None, policy: NetPolicy, refusal: str | None
) -> None:
    if refusal is None:
        check_address(address, policy, port=port)
    else:
        with pytest.raises(BmcAddressRefused) as err:
            check_address(address, policy, port=port)
        assert refusal in str(err.value)


def test_refusal_names_the_allowed_ports_and_the_setting() -> None:
    assert check_port(22, NetPolicy(ports=((443, 443), (8000, 8999)))) == (
        "port 22 is not a BMC port (allowed: 443,8000-8999; BRONZE_BMC_PORTS)"
    )


@pytest.mark.parametrize(
    "items,parsed",
    [
        (["443"], ((443, 443),)),
        (["80", " 8000-8999 "], ((80, 80), (8000, 8999))),
        (["1-65535"], ((1, 65535),)),
        (["0"], ValueError),
        (["9000-8000"], ValueError),
        (["65536"], ValueError),
        (["https"], ValueError),
        (["80-"], ValueError),
        (["-80"], ValueError),
    ],
    ids=[
        "one",
        "list-and-range",
        "all",
        "zero",
        "reversed",
        "too-high",
        "name",
        "open-end",
        "open-start",
    ],
)
def test_parse_ports(items: list[str], parsed: object) -> None:
    if parsed is ValueError:
        with pytest.raises(ValueError):
            parse_ports(items)
    else:
        assert parse_ports(items) == parsed
