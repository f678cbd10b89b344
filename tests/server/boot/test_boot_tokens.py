"""Enrollment tokens of ``/boot.ipxe``: bound to one boot and one address (Issue 10.1).

Unit tests over ``MemoryAgentStore`` (a seam); the REST path is in test_boot_api.py."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from server.agents.store import MemoryAgentStore
from server.agents.tokens import BootstrapTokens, EnrollmentDenied, bound_address, peer_ip

KEY = b"k" * 32
TTL = dt.timedelta(minutes=5)


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:10.0.0.5:51234", "10.0.0.5"),
        ("ipv6:[::1]:51234", "::1"),
        ("ipv6:%5B::1%5D:51234", "::1"),
        ("ipv6:[::ffff:10.0.0.5]:51234", "10.0.0.5"),
        ("unix:/run/x.sock", None),
        ("ipv4:not-an-ip:1", None),
        ("", None),
        (None, None),
    ],
    ids=["v4", "v6", "v6_escaped", "v4_mapped", "unix", "garbage", "empty", "none"],
)
def test_peer_ip(peer: str | None, ip: str | None) -> None:
    assert peer_ip(peer) == ip


@pytest.mark.parametrize(
    ("ref", "address"),
    [("0000abcd@10.0.0.5#0011", "10.0.0.5"), ("manual", None), ("pxe-1-ab", None)],
    ids=["bound", "manual", "legacy"],
)
def test_bound_address(ref: str, address: str | None) -> None:
    assert bound_address(ref) == address


def test_same_boot_same_token_other_boot_replaces_and_address_is_checked() -> None:
    store = MemoryAgentStore()
    store.add_machine("m1")
    tokens = BootstrapTokens(store)

    async def go() -> None:
        first = await tokens.issue_bound("m1", "0001", "10.0.0.5", TTL, KEY)
        assert await tokens.issue_bound("m1", "0001", "10.0.0.5", TTL, KEY) == first
        with pytest.raises(EnrollmentDenied):
            await tokens.redeem("m1", first, peer="10.0.0.66")  # stolen: useless elsewhere
        with pytest.raises(EnrollmentDenied):
            await tokens.redeem("m1", first, peer=None)
        await tokens.redeem("m1", first, peer="10.0.0.5")  # the theft attempt did not burn it
        with pytest.raises(EnrollmentDenied):
            await tokens.redeem("m1", first, peer="10.0.0.5")  # single use
        again = await tokens.issue_bound("m1", "0001", "10.0.0.5", TTL, KEY)
        assert again != first  # a used token is never handed out again
        other = await tokens.issue_bound("m1", "0002", "10.0.0.5", TTL, KEY)
        assert other != again
        with pytest.raises(EnrollmentDenied):
            await tokens.redeem("m1", again, peer="10.0.0.5")  # replaced by the new boot

    asyncio.run(go())
