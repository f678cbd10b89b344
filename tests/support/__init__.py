"""Shared helpers for the test suite (and for bench/, which imports them too).

Test modules import helpers only from here and from ``tests.peers`` (real peers: servers,
BMC simulators, network labs), never from another test module or another folder's conftest:

- ``wait``: :func:`~tests.support.wait.eventually`, the one polling wait (no sleeps in tests).
- ``ports``: free loopback ports.
- ``clock``: :class:`~tests.support.clock.FakeClock`, monotonic + wall time under test control.
- ``procs``: console-script paths, starting children with default signal dispositions,
  stopping them by PID.
- ``bmc``, ``api``, ``boot``, ``cli``, ``pxe``: helpers one area's tests share with another's.
"""
