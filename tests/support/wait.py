"""Waiting for something to become true without sleeping a guessed amount.

``eventually(check)`` calls ``check`` until it returns a truthy value (which it returns) or
the timeout passes. An ``AssertionError`` or ``LookupError`` (``KeyError``, ``IndexError``)
from ``check`` means "not yet"; the last one is shown when the wait gives up. The timeout is a
ceiling for slow machines, never a measurement: a passing check returns at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns a truthy value (returned) or raise at the deadline."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    value: T | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (AssertionError, LookupError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met within {timeout}s (last: {last!r}, value: {value!r})"
            )
        time.sleep(interval)
