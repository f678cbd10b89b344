"""A clock the test moves by hand, for code that takes its time source as a parameter.

One object serves both kinds of time the product injects:

- monotonic seconds: ``clock.monotonic()`` and ``clock.sleep(s)`` (which records ``s`` in
  ``clock.sleeps`` and moves time on instead of waiting), as ``bmc.BmcController`` takes them;
- wall time: ``clock()`` returns an aware UTC ``datetime``, as ``BootstrapTokens(now=...)``
  takes it. ``clock.t`` reads or sets the same instant as a datetime.

Both advance together: ``clock.now += 5`` and ``clock.t += timedelta(seconds=5)`` are the same.
"""

from __future__ import annotations

import datetime as dt

WALL_START = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self, now: float = 1000.0, wall: dt.datetime = WALL_START) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self._wall_at_start = wall - dt.timedelta(seconds=now)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def t(self) -> dt.datetime:
        return self._wall_at_start + dt.timedelta(seconds=self.now)

    @t.setter
    def t(self, value: dt.datetime) -> None:
        self.now = (value - self._wall_at_start).total_seconds()

    def __call__(self) -> dt.datetime:
        return self.t
