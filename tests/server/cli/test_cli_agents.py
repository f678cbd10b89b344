"""The CLI and its neighbours where agents and the boot plane are involved: ``node reboot``
shows what the server says (409 for a machine that never had an agent), ``bronze-agent run``
takes its bootstrap token from a file or the environment (never argv), ``bronze pxe`` checks its
token before serving, and the timeline sink backs off on refusals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxe import TimelineEvent, TimelineKind
from server.boot.remote import HttpTimelineSink
from tests.peers.apiserver import RunningServer, run_server
from tests.support.cli import run
from tests.support.paths import FIXTURES
from tests.support.ports import free_udp_port as free_port
from tests.support.procs import AGENT_BIN, BRONZE
from tests.support.wait import eventually


@pytest.fixture
def agent_srv(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data",
        sqlite_url,
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        agent_heartbeat_interval=1.0,
    ) as srv:
        yield srv


def _spawn_agent(
    srv: RunningServer, tmp_path: Path, kernel_args: str, *extra: str
) -> subprocess.Popen[bytes]:
    root = tmp_path / "node" / "root"
    shutil.copytree(FIXTURES / "dell-r650", root, symlinks=True)
    (root / "etc/bronze").mkdir(parents=True, exist_ok=True)
    (root / "etc/bronze/ca.pem").write_bytes(srv.app.state.agent_api.ca.cert_pem)
    (root / "proc/cmdline").write_text(f"console=ttyS0 {kernel_args}\n")
    log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115 - closed right after the fork
    proc = subprocess.Popen(
        [
            str(AGENT_BIN),
            "run",
            "--root",
            str(root),
            "--heartbeat",
            "0.5",
            "--backoff-max",
            "0.5",
            "--no-fsync",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    return proc


def test_reboot_answers_what_the_server_says(
    agent_srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    assert (
        run(
            agent_srv, tmp_path, "machines", "create", "n1", "--mac", "02:00:00:00:0a:01"
        ).returncode
        == 0
    )
    r = run(agent_srv, tmp_path, "node", "n1", "reboot")
    assert r.returncode == 1
    assert r.stderr.startswith("error: n1: 409 agent_never_connected: machine n1 has never")
    assert agent_srv.client().get("/api/v1/machines/n1/agent").json()["pending_commands"] == 0

    # The agent enrolls with its token from a 0600 file (not on the kernel command line).
    tok_out = tmp_path / "enroll.token"
    r = run(
        agent_srv,
        tmp_path,
        "agent",
        "enrollment-token",
        "n1",
        "--output-file",
        str(tok_out),
        "-o",
        "json",
    )
    assert r.returncode == 0, r.stderr
    mid = json.loads(r.stdout)["machine_id"]
    server, enroll = json.loads(r.stdout)["server"], json.loads(r.stdout)["enroll"]
    args = f"bronze.machine={mid} bronze.server={server} bronze.enroll={enroll}"
    proc = _spawn_agent(agent_srv, tmp_path, args, "--token-file", str(tok_out))
    procs.append(proc)
    assert tok_out.read_text().strip() not in " ".join(map(str, proc.args))  # type: ignore[arg-type]
    eventually(
        lambda: json.loads(run(agent_srv, tmp_path, "agent", "show", "n1", "-o", "json").stdout)[
            "connected"
        ],
        30,
    )
    r = run(agent_srv, tmp_path, "agent", "show", "n1")
    assert re.search(r"n1\s+yes\s+yes", r.stdout), r.stdout
    r = run(agent_srv, tmp_path, "node", "n1", "reboot", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["delivery"] == "sent"


def test_agent_refuses_a_token_on_argv(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(AGENT_BIN), "run", "--root", str(tmp_path), "--token", "brz_secret"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        r.returncode == 2 and "never taken from argv" in r.stderr and "brz_secret" not in r.stderr
    )


def _pxe_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    dhcp, client, proxy, tftp = free_port(), free_port(), free_port(), free_port()
    env.update(
        {
            "BRONZE_PXE_ADDRESS": "127.0.0.1",
            "BRONZE_PXE_DHCP_PORT": str(dhcp),
            "BRONZE_PXE_DHCP_CLIENT_PORT": str(client),
            "BRONZE_PXE_PROXY_PORT": str(proxy),
            "BRONZE_PXE_TFTP_PORT": str(tftp),
            "BRONZE_PXE_TFTP_ROOT": str(tmp_path),
            "BRONZE_PXE_STATE_DIR": str(tmp_path / "pxe-state"),
        }
    )
    return env


@pytest.mark.parametrize(
    ("role", "message"),
    [(None, "refused the token (401)"), ("reader", "create one with role boot")],
    ids=["unknown-token", "wrong-role"],
)
def test_pxe_checks_its_token_before_serving(
    api_sqlite: RunningServer, tmp_path: Path, role: str | None, message: str
) -> None:
    token = "brz_not_a_token"  # noqa: S105 - a wrong token on purpose
    if role:
        token = (
            api_sqlite.client()
            .post("/api/v1/tokens", json={"name": "rack", "role": role})
            .json()["token"]
        )
    tok = tmp_path / "boot.token"
    tok.write_text(token)
    r = subprocess.run(
        [BRONZE, "pxe", "--server", api_sqlite.url, "--token-file", str(tok)],
        capture_output=True,
        text=True,
        env=_pxe_env(tmp_path),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "serving" not in r.stderr


def test_timeline_sink_backs_off_when_refused(api_sqlite: RunningServer) -> None:
    async def scenario() -> tuple[int, float, int]:
        sink = HttpTimelineSink(api_sqlite.url, "brz_wrong", interval=0.01, max_interval=0.04)
        sink(TimelineEvent(TimelineKind.DISCOVER, mac="02:00:00:00:0b:01"))
        await sink.start()
        while sink.failures < 4:
            await asyncio.sleep(0.01)
        failures, delay, kept = sink.failures, sink.delay, len(sink._buf)
        await sink.stop()
        return failures, delay, kept

    failures, delay, kept = asyncio.run(scenario())
    assert failures >= 4 and delay == 0.04 and kept == 1
