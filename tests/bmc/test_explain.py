"""Operator sentences for BMC failures (:func:`bmc.explain.describe`): a table."""

from __future__ import annotations

import pytest

from bmc import (
    BmcAuthError,
    BmcBusyError,
    BmcConnectionError,
    BmcDeadlineExceeded,
    BmcError,
    BmcServerError,
    BmcTimeoutError,
    BmcUnsupportedError,
)
from bmc.explain import describe

LIB = "RetryError: Max retry while sending and/or receiving ipmimessage for rmcp host"
TIMEOUT = BmcTimeoutError(bmc="10.0.0.12:623", seconds=3.0, detail=LIB)

CASES = [
    (TIMEOUT, 4, 16.2, "BMC 10.0.0.12:623 did not answer (4 tries in 16 s)"),
    (TIMEOUT, 1, 3.04, "BMC 10.0.0.12:623 did not answer (1 try in 3.0 s)"),
    (
        BmcDeadlineExceeded(
            bmc="10.0.0.12:623",
            operation="power-on",
            attempts=3,
            seconds=9.0,
            last=str(TIMEOUT),
            cause=TIMEOUT,
        ),
        3,
        9.0,
        "BMC 10.0.0.12:623 did not answer (3 tries in 9.0 s)",
    ),
    (
        BmcConnectionError(bmc="10.0.0.12:443", detail="ConnectionRefusedError: [Errno 111]"),
        4,
        12.0,
        "BMC 10.0.0.12:443 refused or dropped the connection (4 tries in 12 s)",
    ),
    (
        BmcBusyError(bmc="b:623", detail="cc=0xc0"),
        4,
        8.0,
        "BMC b:623 stayed busy (4 tries in 8.0 s)",
    ),
    (
        BmcServerError(bmc="b:443", status=500, detail="boom"),
        2,
        1.5,
        "BMC b:443 kept answering HTTP 500 (2 tries in 1.5 s)",
    ),
    (
        BmcAuthError(bmc="b:623", user="admin", detail="AuthenticationError: RAKP"),
        1,
        0.2,
        "BMC b:623 rejected the credentials of user 'admin' (authentication failed)",
    ),
    (
        BmcUnsupportedError(bmc="b:623", operation="boot", detail="cc=0xc1"),
        1,
        0.2,
        "BMC b:623 does not support boot: cc=0xc1",
    ),
]


@pytest.mark.parametrize(
    "error,attempts,elapsed,sentence", CASES, ids=[type(c[0]).__name__ + str(c[1]) for c in CASES]
)
def test_describe(error: BmcError, attempts: int, elapsed: float, sentence: str) -> None:
    assert describe(error, attempts, elapsed) == sentence
    assert "RetryError" not in describe(error, attempts, elapsed)


def test_the_endpoint_key_wins_over_the_errors_own() -> None:
    error = BmcTimeoutError(bmc="driver-view", seconds=1.0, detail=LIB)
    assert describe(error, 1, 1.0, "10.0.0.12:623").startswith("BMC 10.0.0.12:623 ")
