"""Trust at the fleet's edge, end to end: a real server (uvicorn + database + agent gRPC API with
real certificates) and real ``bronze-agent`` processes.

* a discovered (not accepted) machine gets no certificate, only records its inventory, and
  enrolls once accepted;
* an agent holding an expired certificate, or whose clock runs days ahead, shows up on its
  machine as a trouble event (and in the log with the peer address);
* the server certificate survives a restart and is backdated a day;
* a fleet CA about to expire turns ``/healthz`` degraded and writes an event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from agent.identity import Credentials, CredentialStore, new_key_and_csr
from server.agents.pki import FleetCA, key_to_pem, write_private
from tests.peers.apiserver import RunningServer, run_server
from tests.support.agentlab import spawn_agent
from tests.support.paths import FIXTURES
from tests.support.procs import AGENT_BIN
from tests.support.wait import eventually

AGENT_API = {
    "agent_api_enabled": True,
    "agent_enroll_port": 0,
    "agent_session_port": 0,
    "agent_heartbeat_interval": 1.0,
}


def _root(srv: RunningServer, tmp: Path, name: str, kernel_args: str) -> Path:
    root = tmp / name / "root"
    shutil.copytree(FIXTURES / "dell-r650", root, symlinks=True)
    (root / "etc/bronze").mkdir(parents=True, exist_ok=True)
    (root / "etc/bronze/ca.pem").write_bytes(srv.app.state.agent_api.ca.cert_pem)
    (root / "proc/cmdline").write_text(f"console=ttyS0 {kernel_args}\n")
    return root


def _machine(c: httpx.Client, name: str, phase: str, mac: str) -> str:
    r = c.post("/api/v1/machines", json={"name": name, "nics": [{"mac": mac}], "phase": phase})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _events(c: httpx.Client, name: str, kind: str) -> list[dict]:
    return list(c.get("/api/v1/events", params={"machine": name, "kind": kind}).json()["items"])


def test_discovered_machine_gets_no_certificate_until_accepted(
    tmp_path: Path, db_url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    with run_server(tmp_path / "data", db_url, **AGENT_API) as srv:
        c = srv.client()
        mid = _machine(c, "stray", "discovered", "02:00:00:00:09:01")
        tok = c.post("/api/v1/machines/stray/enrollment-token", json={"boot_ref": "boot-1"})
        assert tok.status_code == 201, tok.text
        root = _root(srv, tmp_path, "stray", tok.json()["kernel_args"])
        spawn_agent(root, procs)

        # It proves its token and reports inventory; it gets nothing back.
        eventually(lambda: _events(c, "stray", "agent.enroll.pending"), 30)
        hw = eventually(lambda: c.get("/api/v1/machines/stray").json()["hardware"], 10)
        assert hw["smbios"]["vendor"] == "Dell Inc."
        agent = c.get("/api/v1/machines/stray/agent").json()
        assert agent["enrolled"] is False and agent["connected"] is False
        assert not (root / "var/lib/bronze/cert.pem").exists()
        log = (root.parent / "agent.log").read_text()
        assert "not accepted by an operator yet" in log
        assert srv.app.state.agent_api.hub.is_connected(mid) is False

        # Accepted: the same agent (same token, still retrying) enrolls and holds a session.
        r = c.patch("/api/v1/machines/stray", json={"phase": "registered"})
        assert r.status_code == 200, r.text
        state = eventually(
            lambda: (s := c.get("/api/v1/machines/stray/agent").json())["connected"] and s, 30
        )
        assert state["enrolled"] and state["certificate"]["serial"]
        assert (root / "var/lib/bronze/cert.pem").exists()


def _install_creds(srv: RunningServer, root: Path, machine_id: str, ca: FleetCA) -> None:
    """Put a client certificate issued by ``ca`` (the server's CA key, maybe another clock)
    into the agent's state directory, as if it had enrolled long ago."""
    key_pem, csr = new_key_and_csr(machine_id)
    issued = ca.sign_client_csr(csr, machine_id)
    trust = srv.app.state.agent_api.ca.cert_pem
    CredentialStore(root / "var/lib/bronze", fsync=False).save(
        Credentials(key_pem, issued.cert_pem, trust)
    )
    # As if it had enrolled: the machine's accepted certificate (sessions of others are refused).
    store = srv.app.state.agent_store
    asyncio.run(store.record_certificate(machine_id, issued))


def _ca_at(srv: RunningServer, when: dt.datetime) -> FleetCA:
    ca = srv.app.state.agent_api.ca
    return FleetCA(ca._key, ca.cert, now=lambda: when)


def test_expired_certificate_and_clock_skew_reach_the_operator(
    tmp_path: Path,
    db_url: str,
    procs: list[subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="server.agents.service")
    with run_server(tmp_path / "data", db_url, **AGENT_API) as srv:
        c = srv.client()
        api = srv.app.state.agent_api
        now = dt.datetime.now(dt.UTC)

        # 1. A certificate that expired two days ago (no token: the machine booted from disk).
        old = _machine(c, "old-cert", "ready", "02:00:00:00:09:02")
        ports = (
            f"bronze.server=127.0.0.1:{api.session_port} bronze.enroll=127.0.0.1:{api.enroll_port}"
        )
        root = _root(srv, tmp_path, "old-cert", f"bronze.machine={old} {ports}")
        _install_creds(srv, root, old, _ca_at(srv, now - dt.timedelta(days=3)))
        _spawn_agent(root, procs)
        (ev,) = eventually(lambda: _events(c, "old-cert", "agent.trouble"), 30)
        assert "certificate_expired" in ev["data"]["findings"]
        assert "expired" in ev["message"] and ev["data"]["peer"]
        assert any(
            f"machine={old}" in r.getMessage()
            and "peer=" in r.getMessage()
            and "expired" in r.getMessage()
            for r in caplog.records
        )
        assert not api.hub.is_connected(old)

        # 2. A valid certificate, but the agent's clock runs three days ahead.
        ahead = _machine(c, "ahead", "ready", "02:00:00:00:09:03")
        root = _root(srv, tmp_path, "ahead", f"bronze.machine={ahead} {ports}")
        _install_creds(srv, root, ahead, api.ca)
        _spawn_agent(root, procs, "--clock-offset", str(3 * 86400))
        (ev,) = eventually(lambda: _events(c, "ahead", "agent.trouble"), 30)
        assert ev["data"]["findings"] == ["clock_ahead"]
        assert "clock skew" in ev["message"] and ev["data"]["skew_seconds"] > 86400
        # The server's clock says its certificate is fine: it connects and stays connected.
        eventually(lambda: c.get("/api/v1/machines/ahead/agent").json()["connected"], 30)


def _spawn_agent(root: Path, procs: list[subprocess.Popen[bytes]], *extra: str) -> None:
    # --clock-offset exists only in the test harness, not in the shipped bronze-agent.
    cmd = [sys.executable, "-m", "tests.peers.agent_harness"] if extra else [str(AGENT_BIN)]
    argv = [*cmd, "run", "--root", str(root), "--heartbeat", "0.5"]
    argv += ["--backoff-max", "0.5", "--no-fsync", *extra]
    with (root.parent / "agent.log").open("ab") as log:
        repo = Path(__file__).resolve().parents[3]
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=repo))


def _server_cert(port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_server_certificate_survives_restart_and_is_backdated(tmp_path: Path, db_url: str) -> None:
    with run_server(tmp_path / "data", db_url, **AGENT_API) as srv:
        first = _server_cert(srv.app.state.agent_api.session_port)
        health = srv.client().get("/healthz").json()
        assert health["components"]["pki"] == "ok" and health["status"] == "ok"
        assert _server_cert(srv.app.state.agent_api.enroll_port) == first
    # An agent whose clock lags (up to a day) accepts it...
    assert first.not_valid_before_utc <= dt.datetime.now(dt.UTC) - dt.timedelta(hours=23)
    # ...and a restart does not replace it with one issued "just now".
    with run_server(tmp_path / "data", db_url, **AGENT_API) as srv:
        assert _server_cert(srv.app.state.agent_api.session_port) == first
    # New names in the settings: a new certificate with them.
    with run_server(
        tmp_path / "data", db_url, agent_server_names=["127.0.0.1", "bronze.test"], **AGENT_API
    ) as srv:
        assert _server_cert(srv.app.state.agent_api.session_port) != first


def test_fleet_ca_near_expiry_degrades_healthz_and_writes_event(
    tmp_path: Path, db_url: str
) -> None:
    pki = tmp_path / "data" / "pki"
    pki.mkdir(parents=True)
    ca = FleetCA.create(lifetime=dt.timedelta(days=10))
    write_private(pki / "ca.key", key_to_pem(ca._key))
    (pki / "ca.crt").write_bytes(ca.signer_pem)
    with run_server(tmp_path / "data", db_url, **AGENT_API) as srv:
        c = srv.client()
        h = c.get("/healthz").json()
        assert h["status"] == "degraded"
        assert h["components"]["pki"].startswith("expiring: fleet CA expires")
        assert h["components"]["agent_api"] == "ok"
        items = c.get("/api/v1/events", params={"kind": "pki.expiring"}).json()["items"]
        assert [e["data"]["what"] for e in items] == ["fleet CA"]
