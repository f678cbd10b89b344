"""``bronze node ... -f`` stops on SIGINT even when it was started with SIGINT ignored.

An ignored signal survives exec, so a follow started from a backgrounded shell or a CI runner
used to ignore Ctrl-C and stream forever. The child here is launched through
``bash -c 'trap "" INT; exec bronze ...'`` (SIG_IGN inherited, exactly as ``cmd &`` does) and
with default dispositions; in both it must stop on SIGINT with exit code 130.

The API side is a stand-in HTTP server on 127.0.0.1 that streams one NDJSON line and then holds
the stream open: the behaviour under test is the CLI process's, and a real followed node log
needs an agent (tests/server/agents/test_node_ops_e2e.py covers that path end to end).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import BRONZE, stop_process

IGNORING_SIGINT = ["bash", "-c", 'trap "" INT; exec "$0" "$@"']
CAPTURE: dict[str, object] = {"capture_output": True, "text": True, "check": True, "timeout": 30}


class _Stream(http.server.BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        self.wfile.write(json.dumps({"data": "first line\n"}).encode() + b"\n")
        self.wfile.flush()
        self.release.wait(60)  # hold the stream open, as a quiet followed log does

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def stream_url() -> Iterator[str]:
    _Stream.release.clear()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stream)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        _Stream.release.set()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("inherited", ["ignored", "default"], ids=["sigint-ignored", "default"])
def test_follow_stops_on_sigint(stream_url: str, tmp_path: Path, inherited: str) -> None:
    tok = tmp_path / "token"
    tok.write_text("brz_test\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env.update(
        BRONZE_URL=stream_url,
        BRONZE_TOKEN_FILE=str(tok),
        BRONZE_CONFIG=str(tmp_path / "none.toml"),
        PYTHONUNBUFFERED="1",
    )
    argv = [BRONZE, "node", "node-1", "logs", "chronyd", "-f"]
    if inherited == "ignored":
        argv = [*IGNORING_SIGINT, *argv]
        # The launcher does what it claims: an exec'd program starts with SIGINT ignored.
        status = subprocess.run([*IGNORING_SIGINT, "cat", "/proc/self/status"], **CAPTURE)
        sig_ign = next(ln for ln in status.stdout.splitlines() if ln.startswith("SigIgn:"))
        assert int(sig_ign.split()[1], 16) & (1 << (signal.SIGINT - 1))
    cli = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == b"first line\n"  # streaming: the handler is in place
        cli.send_signal(signal.SIGINT)
        assert cli.wait(30) == 130
    finally:
        stop_process(cli)
