"""The upgrade's file fetcher against a real HTTP server on loopback: it outlasts a server that
is down for a few seconds (a restart), and takes a 4xx as final."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.install import InstallError
from agent.upgrade import fetcher
from tests.support.ports import free_port


class Files(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        Files.requests.append(self.path)
        if self.path == "/assets/kernel":
            body = b"kernel bytes"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def serve_later(port: int, delay: float) -> tuple[list[ThreadingHTTPServer], threading.Thread]:
    started: list[ThreadingHTTPServer] = []

    def run() -> None:
        time.sleep(delay)
        srv = ThreadingHTTPServer(("127.0.0.1", port), Files)
        started.append(srv)
        srv.serve_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return started, t


def test_a_server_back_within_patience_is_waited_for() -> None:
    port = free_port()
    started, _ = serve_later(port, 2.0)
    try:
        t0 = time.monotonic()
        body = fetcher(timeout=5, patience=30)(f"http://127.0.0.1:{port}/assets/kernel")().read()
        assert body == b"kernel bytes"
        assert time.monotonic() - t0 >= 2.0  # it really was down, and waited
    finally:
        for srv in started:
            srv.shutdown()


def test_a_4xx_is_final_and_a_dead_server_gives_up_after_patience() -> None:
    port = free_port()
    started, _ = serve_later(port, 0.0)
    try:
        time.sleep(0.3)
        Files.requests.clear()
        with pytest.raises(InstallError, match="HTTP 404"):
            fetcher(timeout=5, patience=30)(f"http://127.0.0.1:{port}/assets/nope")()
        assert Files.requests == ["/assets/nope"]  # asked once: the answer would not change
    finally:
        for srv in started:
            srv.shutdown()
    dead = free_port()
    with pytest.raises(InstallError, match="ConnectError"):
        fetcher(timeout=1, patience=1.0)(f"http://127.0.0.1:{dead}/assets/kernel")()
