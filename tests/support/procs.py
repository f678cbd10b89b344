"""Child processes a test starts: where the console scripts are, their signal dispositions,
and stopping them.

Console scripts (``bronze``, ``bronze-agent``) are taken from the virtualenv next to
``sys.executable``, so a test runs the code of this checkout, never a ``bronze`` on ``PATH``.

Signal dispositions: an ignored signal stays ignored across ``fork`` + ``exec`` (POSIX), and
Python's ``subprocess`` restores only SIGPIPE/SIGXFSZ. A suite launched from a backgrounded
non-interactive shell (``cmd &``: SIGINT and SIGQUIT ignored) or by a CI runner that ignores
SIGINT would hand that to every child, and a test that stops a child with SIGINT (Ctrl-C) would
wait forever. :func:`reset_inherited_signals` (called once by ``tests/conftest.py``) puts SIGINT
and SIGTERM back to their defaults in the test process, so every child starts from defaults
however the suite was launched. SIGHUP is left alone (``nohup pytest`` means it).

Stopping: by PID only, SIGTERM first, SIGKILL after a grace period.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
BRONZE = str(BIN / "bronze")
AGENT_BIN = BIN / "bronze-agent"


def console_script(name: str) -> str:
    """The path of console script ``name`` in the virtualenv running the tests."""
    return str(BIN / name)


def reset_inherited_signals() -> list[str]:
    """Undo SIG_IGN inherited for SIGINT/SIGTERM in this process; returns the names reset."""
    reset = []
    for sig, handler in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGTERM, signal.SIG_DFL),
    ):
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, handler)
            reset.append(sig.name)
    return reset


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 5.0) -> None:
    """Stop one child we started, by its PID: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
