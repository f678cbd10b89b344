"""Reaching into the lab's namespace from the host: child processes, threads that joined it, the
lab's REST API, and waiting for a peer."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from server.lab.tools import LabError

T = TypeVar("T")


def default_signals() -> None:
    """In the child before exec: SIGINT/SIGTERM back to their defaults, so a lab started from a
    shell or CI runner that ignores them can still be stopped by ``down``'s SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
    finally:
        os.close(fd)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Runs ``fn`` in a new thread that joined namespace ``ns`` (namespaces are per thread):
    the sockets it opens live in the lab, the caller stays in the host namespace."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            _setns(ns)
            box["v"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["e"] = exc

    t = threading.Thread(target=main, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]  # type: ignore[no-any-return]


class Api:
    """The lab's bronze REST API, called from inside the namespace."""

    def __init__(self, ns: str, url: str, token_file: Path) -> None:
        self.ns, self.url, self.token_file = ns, url, token_file

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        token = self.token_file.read_text().strip()

        kw.setdefault("timeout", 30)

        def go() -> Any:
            r = httpx.request(
                method, self.url + path, headers={"Authorization": f"Bearer {token}"}, **kw
            )
            if r.status_code >= 400:
                raise LabError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
            return r.json() if r.content else None

        return in_netns(self.ns, go)


def wait_for(what: str, check: Callable[[], bool], timeout: float, log_file: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.3)
    tail = ""
    if log_file and log_file.exists():
        tail = "\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
    raise LabError(f"{what} did not come up within {timeout:.0f}s{tail}")
