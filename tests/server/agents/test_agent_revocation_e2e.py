"""Revocation wired into the server: a real uvicorn server with the agent API, the database store
and real ``bronze-agent`` processes. The operator revokes, reprovisions, deletes; the agent's old
certificate stops opening sessions and its live session is closed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.agentlab import boot_root, spawn_agent
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


def _start_agent(
    c: httpx.Client, srv: RunningServer, tmp: Path, name: str, procs: list[Any]
) -> tuple[Path, dict[str, Any]]:
    """Enroll a real agent for ``name`` (fresh root under ``tmp``) and wait for its session."""
    tok = c.post(f"/api/v1/machines/{name}/enrollment-token", json={"boot_ref": tmp.name})
    assert tok.status_code == 201, tok.text
    root = boot_root(srv, tmp, tok.json()["kernel_args"])
    spawn_agent(root, procs)
    state = eventually(
        lambda: (s := c.get(f"/api/v1/machines/{name}/agent").json())["connected"] and s, 30
    )
    return root.parent / "agent.log", state


def _create(c: httpx.Client, name: str, mac: str) -> str:
    r = c.post("/api/v1/machines", json={"name": name, "nics": [{"mac": mac}]})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_revoke_endpoint_closes_the_session_and_refuses_the_certificate(
    srv: RunningServer, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    c = srv.client()
    mid = _create(c, "node-r", "02:00:00:00:07:01")
    log, state = _start_agent(c, srv, tmp_path / "a", "node-r", procs)
    serial = state["certificate"]["serial"]

    r = c.post("/api/v1/machines/node-r/agent/revoke")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "machine_id": mid,
        "name": "node-r",
        "revoked_serials": [serial],
        "session_closed": True,
    }
    eventually(lambda: "certificate revoked" in log.read_text(), 30)
    assert not srv.app.state.agent_api.hub.is_connected(mid)
    agent = c.get("/api/v1/machines/node-r/agent").json()
    assert agent["certificate"]["serial"] is None and agent["certificate"]["revoked_at"]
    events = c.get("/api/v1/machines/node-r/events").json()["items"]
    ev = next(e for e in events if e["kind"] == "agent.certificate.revoked")
    request_id = ev["data"].pop("request_id")  # the revoke request's id (docs/metrics.md)
    assert ev["data"] == {"reason": "operator", "serials": [serial]} and len(request_id) == 32

    r = c.post("/api/v1/machines/no-such-node/agent/revoke")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


def test_reenrollment_reprovision_and_delete_revoke(
    srv: RunningServer, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    c = srv.client()
    mid = _create(c, "node-p", "02:00:00:00:07:02")
    hub = srv.app.state.agent_api.hub
    log_a, _ = _start_agent(c, srv, tmp_path / "a", "node-p", procs)

    # Reprovision: the old certificate is revoked, the live session closed.
    r = c.patch("/api/v1/machines/node-p", json={"phase": "provisioning"})
    assert r.status_code == 200, r.text
    eventually(lambda: "certificate revoked" in log_a.read_text(), 30)
    kinds = [e["kind"] for e in c.get("/api/v1/machines/node-p/events").json()["items"]]
    assert "agent.certificate.revoked" in kinds

    # The reprovisioned machine enrolls again (new root, new key): its session is the one held,
    # and agent A's old certificate keeps being refused.
    log_b, _ = _start_agent(c, srv, tmp_path / "b", "node-p", procs)
    refusals = log_a.read_text().count("certificate revoked")
    eventually(lambda: log_a.read_text().count("certificate revoked") > refusals, 30)
    session = hub.registry.get(mid)
    assert session is not None and session.peer

    # Delete: the live session of the deleted machine is closed, and it cannot come back.
    assert c.delete("/api/v1/machines/node-p").status_code == 204
    eventually(lambda: not hub.is_connected(mid), 30)
    eventually(lambda: "unknown machine" in log_b.read_text(), 30)
