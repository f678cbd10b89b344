"""Node operations, followed logs and apply modes end to end: a real uvicorn server with the agent
API, real ``bronze-agent`` processes enrolled through REST, the ``bronze`` console script."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.cli import BRONZE, run
from tests.support.paths import FIXTURES
from tests.support.procs import AGENT_BIN
from tests.support.wait import eventually


@pytest.fixture
def srv(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data",
        db_url,
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        agent_heartbeat_interval=1.0,
    ) as s:
        yield s


def start_node(
    srv: RunningServer, tmp: Path, name: str, mac: str, procs: list[subprocess.Popen[bytes]]
) -> tuple[Path, subprocess.Popen[bytes]]:
    """Create the machine, issue its token over REST, boot a sandbox root, start its agent."""
    c = srv.client()
    r = c.post("/api/v1/machines", json={"name": name, "nics": [{"mac": mac}]})
    assert r.status_code == 201, r.text
    args = c.post(f"/api/v1/machines/{name}/enrollment-token").json()["kernel_args"]
    root = tmp / name / "root"
    shutil.copytree(FIXTURES / "dell-r650", root, symlinks=True)
    (root / "etc/bronze").mkdir(parents=True, exist_ok=True)
    (root / "etc/bronze/ca.pem").write_bytes(srv.app.state.agent_api.ca.cert_pem)
    (root / "proc/cmdline").write_text(f"console=ttyS0 {args}\n")
    with open(root.parent / "agent.log", "ab") as log:
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
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    procs.append(proc)
    eventually(lambda: c.get(f"/api/v1/machines/{name}/agent").json()["connected"], 30)
    return root, proc


def test_bronze_node_ops_rbac_and_per_node_errors(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    start_node(srv, tmp_path, "node-a", "02:00:00:00:30:01", procs)
    start_node(srv, tmp_path, "node-b", "02:00:00:00:30:02", procs)
    c.post("/api/v1/machines", json={"name": "node-c", "nics": [{"mac": "02:00:00:00:30:03"}]})
    reader = c.post("/api/v1/tokens", json={"name": "r", "role": "reader"}).json()["token"]

    r = run(srv, tmp_path, "node", "node-a,node-b", "stats")
    assert r.returncode == 0, r.stderr
    assert "MEM_TOTAL_MIB" in r.stdout and "node-a" in r.stdout and "node-b" in r.stdout
    r = run(srv, tmp_path, "node", "node-a,node-b", "stats", "-o", "json")
    assert [x["node"] for x in json.loads(r.stdout)] == ["node-a", "node-b"]
    assert all(x["data"]["memory_total_bytes"] > 0 for x in json.loads(r.stdout))

    # One node without an agent: one error line for it, the others still shown, exit 1.
    r = run(srv, tmp_path, "node", "node-a,node-c,node-b", "services", token=reader)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: node-c: 409 agent_unavailable: agent of machine "
        f"{c.get('/api/v1/machines/node-c').json()['id']} is not connected"
    ]
    assert r.stdout.count("chronyd") == 2 and "node-b" in r.stdout

    r = run(srv, tmp_path, "node", "node-a,node-b", "logs", "chronyd", "--tail", "2", token=reader)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("node-a: ") and lines[3].endswith("#39")
    r = run(srv, tmp_path, "node", "node-a", "dmesg", "--tail", "1")
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and not r.stdout.startswith("node-a:")
    r = run(srv, tmp_path, "node", "node-a", "logs", "../../etc/shadow")
    assert r.returncode == 1 and "invalid service name" in r.stderr
    assert "PID" in run(srv, tmp_path, "node", "node-b", "ps").stdout

    # RBAC: a reader reads, only an operator reboots.
    r = run(srv, tmp_path, "node", "node-a", "reboot", token=reader)
    assert r.returncode == 1 and "403 forbidden" in r.stderr
    boot = c.get("/api/v1/machines/node-a/agent").json()["boot_id"]
    r = run(srv, tmp_path, "node", "node-a,node-nope", "reboot")
    assert r.returncode == 1 and "error: node-nope: 404 not_found" in r.stderr
    assert "node-a" in r.stdout and "sent" in r.stdout
    eventually(
        lambda: (
            (s := c.get("/api/v1/machines/node-a/agent").json())["connected"]
            and s["boot_id"] != boot
        ),
        30,
    )


def test_follow_streams_ndjson_and_releases_the_agent(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    root_a, _ = start_node(srv, tmp_path, "node-a", "02:00:00:00:31:01", procs)
    root_b, proc_b = start_node(srv, tmp_path, "node-b", "02:00:00:00:31:02", procs)
    hub = srv.app.state.agent_api.hub
    log_a = root_a / "var/log/bronze/chronyd.log"

    # Refusals are plain JSON errors, before any streaming starts.
    r = c.get("/api/v1/machines/node-a/node/ps", params={"follow": "true"})
    assert r.status_code == 422 and r.json()["error"]["details"] == {"field": "follow"}
    r = c.get("/api/v1/machines/node-a/node/logs", params={"follow": "true", "service": "nope"})
    assert r.status_code == 422 and "No such file" in r.json()["error"]["message"]

    # REST: one NDJSON line per chunk; closing the connection releases both ends.
    with (
        httpx.Client(base_url=srv.url, headers=c.headers, timeout=30) as raw,
        raw.stream(
            "GET",
            "/api/v1/machines/node-a/node/logs",
            params={"follow": "true", "service": "chronyd", "tail_lines": 1},
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/x-ndjson"
        lines = resp.iter_lines()
        last = "2024-01-01T00:00:39Z chronyd: selected source 10.0.0.1 #39\n"
        assert json.loads(next(lines)) == {"data": last}
        with log_a.open("a") as fh:
            fh.write("live line 1\n")
        assert json.loads(next(lines)) == {"data": "live line 1\n"}
        assert hub.open_streams() == 1
    eventually(lambda: hub.open_streams() == 0, 15)
    eventually(lambda: "node op cancelled" in (root_a.parent / "agent.log").read_text(), 15)

    # CLI -f on two nodes: prefixed lines as they come; a node going away is one error line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    tok = tmp_path / "cli.token"
    tok.write_text(srv.admin_token)
    env.update(
        {
            "BRONZE_URL": srv.url,
            "BRONZE_TOKEN_FILE": str(tok),
            "BRONZE_CONFIG": str(tmp_path / "none.toml"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [BRONZE, "node", "node-a,node-b", "logs", "chronyd", "-f", "--tail", "1"]
    cli = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        seen: list[str] = []
        reader = threading.Thread(
            target=lambda: seen.extend(iter(cli.stdout.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        eventually(lambda: {ln.split(":")[0] for ln in seen} == {"node-a", "node-b"}, 20)
        with (root_b / "var/log/bronze/chronyd.log").open("a") as fh:
            fh.write("from b\n")
        eventually(lambda: "node-b: from b\n" in seen, 20)
        assert hub.open_streams() == 2
        proc_b.send_signal(signal.SIGKILL)
        proc_b.wait(5)
        eventually(lambda: hub.open_streams() == 1, 20)
        with log_a.open("a") as fh:
            fh.write("a goes on\n")
        eventually(lambda: "node-a: a goes on\n" in seen, 20)
        cli.send_signal(signal.SIGINT)
        assert cli.wait(20) == 130
        err = cli.stderr.read()  # type: ignore[union-attr]
        assert "error: node-b: " in err and "disconnected" in err
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(5)
    eventually(lambda: hub.open_streams() == 0, 15)


def test_apply_modes_and_confirm_through_rest(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    root, proc = start_node(srv, tmp_path, "node-a", "02:00:00:00:32:01", procs)
    hostname = root / "etc/hostname"

    def cfg() -> dict:
        return c.get("/api/v1/machines/node-a/config").json()

    def patch(name: str, body: dict, **params: object) -> dict:
        r = c.post(
            "/api/v1/config-patches",
            params=params,
            json={"name": name, "scope": "machine", "machine": "node-a", "patch": body},
        )
        assert r.status_code == 201, r.text
        return r.json()

    r = patch("base", {"hostname": "base"})
    assert r["mode"] == "auto" and r["pushed"] == 1
    base = eventually(lambda: (x := cfg())["in_sync"] and x, 20)["version"]
    assert hostname.read_text() == "base\n"

    # try, not confirmed: applied, then reverted by the node; the server shows the drift.
    r = patch("trial", {"hostname": "trial"}, mode="try", try_timeout_seconds=2)
    assert r["mode"] == "try" and r["pushed"] == 1
    eventually(lambda: hostname.read_text() == "trial\n", 20)
    eventually(lambda: hostname.read_text() == "base\n", 20)
    x = eventually(lambda: (x := cfg())["applied_version"] == base and x, 20)
    assert x["in_sync"] is False and x["desired_version"] != base

    # try, confirmed before its timeout: it stays.
    assert c.delete("/api/v1/config-patches/trial").status_code == 200
    r = patch("kept", {"hostname": "kept"}, mode="try", try_timeout_seconds=3)
    eventually(lambda: hostname.read_text() == "kept\n", 20)
    r = c.post("/api/v1/machines/node-a/config/confirm")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["delivery"] == "sent" and body["result"]["ok"] is True
    assert body["version"] == cfg()["desired_version"]
    # Confirmed: the node dropped its revert plan, so the timeout cannot undo it.
    assert not (root / "var/lib/bronze/try.json").exists()
    assert hostname.read_text() == "kept\n"
    assert (
        c.post("/api/v1/machines/node-a/config/confirm", json={"version": "f" * 32}).json()[
            "result"
        ]["ok"]
        is False
    )

    # no-reboot refuses a boot-time change; staged waits for the next boot.
    patch("kargs", {"kernel_args": ["quiet"]}, mode="no-reboot")
    eventually(
        lambda: (
            "reboot required to change: kernel_args"
            in str(c.get("/api/v1/machines/node-a/agent").json()["last_command"]["error"])
        ),
        20,
    )
    assert c.delete("/api/v1/config-patches/kargs").status_code == 200
    patch("later", {"sysctls": {"vm.swappiness": "7"}}, mode="staged")
    staged = root / "var/lib/bronze/staged.json"
    eventually(lambda: staged.exists(), 20)
    assert json.loads(staged.read_text())["version"] == cfg()["desired_version"]
    assert not (root / "proc/sys/vm/swappiness").exists()  # not in effect before a boot
    # An agent that is not connected gets a non-auto change in that mode when it connects.
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    eventually(lambda: not c.get("/api/v1/machines/node-a/agent").json()["connected"], 15)
    r = patch("offline-try", {"hostname": "offline"}, mode="try", try_timeout_seconds=300)
    assert (r["pushed"], r["queued"]) == (0, 1)
    with open(root.parent / "agent.log", "ab") as log:
        procs.append(
            subprocess.Popen(
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
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    eventually(lambda: hostname.read_text() == "offline\n", 30)
    assert (root / "var/lib/bronze/try.json").exists()  # applied as a try, not for good

    r = c.post(
        "/api/v1/config-patches",
        params={"mode": "sometimes"},
        json={"name": "x", "scope": "fleet", "patch": {}},
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["query", "mode"]
