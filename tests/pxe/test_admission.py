"""``pxe.dhcp.admission`` as tables: classes, the unknown bucket, in-flight cap, pool offers."""

from __future__ import annotations

import pytest

from pxe.dhcp.admission import Admission, Traffic, UnknownOffers
from pxe.dhcp.decide import Drop

K, U = "52:54:00:00:00:01", "02:00:00:00:00:09"


@pytest.mark.parametrize(
    ("listed", "learned_at", "lease", "now", "want"),
    [
        ({K}, None, False, 0.0, Traffic.KNOWN),
        (set(), 0.0, False, 10.0, Traffic.KNOWN),
        (set(), 0.0, False, 601.0, Traffic.UNKNOWN),  # learned answers age out
        (set(), None, True, 0.0, Traffic.KNOWN),  # a bound lease: a client we serve
        (set(), None, False, 0.0, Traffic.UNKNOWN),
    ],
    ids=["listed", "learned", "learned_expired", "lease", "stranger"],
)
def test_classify(
    listed: set[str], learned_at: float | None, lease: bool, now: float, want: Traffic
) -> None:
    a = Admission()
    a.set_known(listed)
    if learned_at is not None:
        a.learn(K, True, learned_at)
    assert a.classify(K, now, lease) is want


def test_unknown_bucket_and_inflight_known_untouched() -> None:
    a = Admission(unknown_rate=1.0, unknown_burst=2, unknown_inflight=2)
    a.set_known({K})
    first, second = a.admit(U, 0.0), a.admit(U, 0.0)
    assert (first, second) == (Traffic.UNKNOWN, Traffic.UNKNOWN)
    assert a.admit(U, 0.0) is Drop.UNKNOWN_BUSY  # two in flight
    a.done(Traffic.UNKNOWN)
    assert a.admit(U, 0.0) is Drop.UNKNOWN_RATE  # bucket empty
    assert a.admit(U, 1.0) is Traffic.UNKNOWN  # refilled one
    assert all(a.admit(K, 1.0) is Traffic.KNOWN for _ in range(100))
    a.learn(K, False, 2.0)  # no effect on the listed set
    assert a.admit(K, 2.0) is Traffic.KNOWN


def test_unknown_offers_capped_and_short() -> None:
    o = UnknownOffers(limit=2, seconds=5.0)
    o.offered("a", 0.0)
    o.offered("b", 1.0)
    assert not o.may_offer("c", 2.0)
    assert o.may_offer("a", 2.0)  # a repeat DISCOVER keeps its offer
    assert o.may_offer("c", 5.0)  # "a" expired
    o.forget("b")
    assert len(o) <= 1
