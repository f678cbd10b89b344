"""A spent enrollment token answers a retry of the enrollment that spent it, and nothing else:
the same token and a CSR for the same key, within the grace window, while the certificate it
was spent on is still the machine's. Real uvicorn + agent API on the database, real gRPC
``Enroll`` calls with real CSRs, and a real ``bronze-agent`` that kept its key."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import grpc
import httpx
from sqlalchemy import select, update

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import csr_for, new_key, write_file
from server.inventory.models import AgentBootstrapToken
from tests.peers.apiserver import RunningServer
from tests.server.agents.test_enrollment_wipe import _server
from tests.support.agentlab import boot_root, spawn_agent
from tests.support.wait import eventually


def _enroll(srv: RunningServer, machine_id: str, tok: str, key_pem: bytes) -> str:
    """``Enroll`` with a CSR for ``key_pem``: the certificate, or the refusal's code."""
    api = srv.app.state.agent_api
    creds = grpc.ssl_channel_credentials(root_certificates=api.ca.cert_pem)
    csr = csr_for(key_pem, machine_id).decode()
    with grpc.secure_channel(f"127.0.0.1:{api.enroll_port}", creds) as ch:
        try:
            resp = pb_grpc.EnrollmentStub(ch).Enroll(
                pb.EnrollRequest(bootstrap_token=tok, machine_id=machine_id, csr_pem=csr),
                timeout=10,
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(resp.cert_pem)


def _machine(c: httpx.Client, name: str, mac: str) -> str:
    r = c.post("/api/v1/machines", json={"name": name, "nics": [{"mac": mac}]})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _token(c: httpx.Client, name: str) -> tuple[str, str]:
    r = c.post(f"/api/v1/machines/{name}/enrollment-token", json={"boot_ref": "b"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"]), str(r.json()["kernel_args"])


def _events(c: httpx.Client, name: str, kind: str) -> list[dict[str, str]]:
    items = c.get("/api/v1/events", params={"machine": name, "kind": kind}).json()["items"]
    return [e["data"] for e in items]


def _age_spent_token(srv: RunningServer, machine_id: str, by: dt.timedelta) -> None:
    t = AgentBootstrapToken
    with srv.app.state.ctx.db.write() as s:
        spent = s.scalar(select(t.spent_at).where(t.machine_id == machine_id))
        assert spent is not None
        s.execute(update(t).where(t.machine_id == machine_id).values(spent_at=spent - by))


def _agent_with_key(
    srv: RunningServer, tmp: Path, kernel_args: str, key_pem: bytes
) -> list[subprocess.Popen[bytes]]:
    """The agent whose first ``Enroll`` answer was lost, started again: its pending
    enrollment key is still in its state directory."""
    root = boot_root(srv, tmp, kernel_args)
    write_file(root / "var/lib/bronze/enroll-key.pem", key_pem, 0o600, fsync=False)
    procs: list[subprocess.Popen[bytes]] = []
    spawn_agent(root, procs)
    return procs


def test_spent_token_answers_only_a_retry_of_its_enrollment(tmp_path: Path, db_url: str) -> None:
    with _server(tmp_path, db_url, agent_heartbeat_interval=1.0) as srv:
        c = srv.client()
        mid = _machine(c, "rt-1", "02:00:00:00:22:01")
        tok, kernel_args = _token(c, "rt-1")
        key = new_key()
        first = _enroll(srv, mid, tok, key)  # its answer is lost: the caller never reads it
        assert "BEGIN CERTIFICATE" in first

        # A leaked token with another key gets nothing; the same key gets the same certificate.
        assert _enroll(srv, mid, tok, new_key()) == "UNAUTHENTICATED"
        assert _enroll(srv, mid, tok, key) == first
        refused = _events(c, "rt-1", "agent.enroll.refused")
        assert [e["reason"] for e in refused] == [
            "token already used (by another key, or its grace window is over)"
        ]
        assert len(_events(c, "rt-1", "agent.enroll.repeated")) == 1

        # The agent that kept its key enrolls with its token and opens its session.
        procs = _agent_with_key(srv, tmp_path, kernel_args, key)
        try:
            eventually(lambda: c.get("/api/v1/machines/rt-1/agent").json()["connected"], 30)
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
        assert len(_events(c, "rt-1", "agent.enroll.repeated")) == 2

        # After the grace window (default 10 min) the same retry is denied.
        _age_spent_token(srv, mid, dt.timedelta(minutes=10, seconds=1))
        assert _enroll(srv, mid, tok, key) == "UNAUTHENTICATED"


def test_revoked_identity_is_not_handed_out_again(tmp_path: Path, db_url: str) -> None:
    with _server(tmp_path, db_url) as srv:
        c = srv.client()
        mid = _machine(c, "rt-2", "02:00:00:00:22:02")
        tok, _ = _token(c, "rt-2")
        key = new_key()
        assert "BEGIN CERTIFICATE" in _enroll(srv, mid, tok, key)
        assert c.post("/api/v1/machines/rt-2/agent/revoke").status_code == 200
        assert _enroll(srv, mid, tok, key) == "UNAUTHENTICATED"
        refused = _events(c, "rt-2", "agent.enroll.refused")
        assert [e["reason"] for e in refused] == [
            "the certificate this token was spent on is revoked or replaced"
        ]
        assert _events(c, "rt-2", "agent.enroll.repeated") == []


def test_grace_zero_answers_no_retry(tmp_path: Path, db_url: str) -> None:
    with _server(tmp_path, db_url, agent_enroll_grace=0) as srv:
        c = srv.client()
        mid = _machine(c, "rt-3", "02:00:00:00:22:03")
        tok, _ = _token(c, "rt-3")
        key = new_key()
        assert "BEGIN CERTIFICATE" in _enroll(srv, mid, tok, key)
        assert _enroll(srv, mid, tok, key) == "UNAUTHENTICATED"
