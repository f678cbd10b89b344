"""``pxe.tftp.limits.ClientLimits`` as tables: token bucket and per-client session cap."""

from __future__ import annotations

import pytest

from pxe.tftp.limits import ClientLimits, Refusal

A, B = "10.0.0.1", "10.0.0.2"


@pytest.mark.parametrize(
    ("rate", "burst", "times", "want"),
    [
        (2.0, 3, [0, 0, 0, 0], [None, None, None, Refusal.RATE]),
        (2.0, 3, [0, 0, 0, 0.5], [None, None, None, None]),  # half a second refills one
        (2.0, 1, [0, 0.1, 0.6], [None, Refusal.RATE, None]),
        (0.0, 1, [0, 0, 0, 0], [None, None, None, None]),  # rate 0: unlimited
    ],
    ids=["burst_spent", "refilled", "slow_refill", "unlimited"],
)
def test_rate(rate: float, burst: int, times: list[float], want: list[Refusal | None]) -> None:
    lim = ClientLimits(per_client=8, rate=rate, burst=burst)
    assert [lim.request(A, t) for t in times] == want
    assert lim.request(B, times[-1]) is None  # another address has its own bucket


@pytest.mark.parametrize(
    ("per_client", "opened", "closed", "want"),
    [
        (2, 1, 0, None),
        (2, 2, 0, Refusal.CLIENT_SESSIONS),
        (2, 2, 1, None),
        (0, 50, 0, None),  # 0: no per-client cap
    ],
    ids=["below", "at_cap", "one_ended", "uncapped"],
)
def test_sessions(per_client: int, opened: int, closed: int, want: Refusal | None) -> None:
    lim = ClientLimits(per_client=per_client)
    for _ in range(opened):
        lim.opened(A, 0.0)
    for _ in range(closed):
        lim.closed(A)
    assert lim.may_open(A) == want
    assert lim.may_open(B) is None


def test_bounded_memory_keeps_busy_clients() -> None:
    lim = ClientLimits(per_client=1, rate=1.0, burst=1, max_clients=10)
    lim.opened(A, 0.0)
    for i in range(100):
        lim.request(f"10.1.0.{i}", 0.0)
    assert len(lim._clients) <= 10
    assert lim.may_open(A) is Refusal.CLIENT_SESSIONS  # its session count survived
