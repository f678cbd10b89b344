"""Two ``bronze serve`` processes on one PostgreSQL: the agent holds its session with replica A,
operators talk to replica B. Config pushes, reboots and try-confirms requested on B reach the
agent through the database (A's hub polls for commands saved by others); node ops on B are
forwarded to A (or answer a precise 409 when A does not answer); when A crashes, its claim on the
session lapses."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from tests.peers.database import fresh_database
from tests.support.paths import FIXTURES
from tests.support.ports import free_port
from tests.support.procs import AGENT_BIN, BRONZE, stop_process
from tests.support.wait import eventually


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def _start(tmp: Path, name: str, env: dict[str, str], **extra: str) -> Replica:
    """Start ``bronze serve`` on free ports; a second try if a port was taken meanwhile."""
    for attempt in range(3):
        port = free_port()
        log = tmp / f"{name}-{attempt}.log"
        e = {
            **env,
            "BRONZE_API_PORT": str(port),
            "BRONZE_AGENT_ENROLL_PORT": str(free_port()),
            "BRONZE_AGENT_SESSION_PORT": str(free_port()),
            **extra,
        }
        with open(log, "ab") as fh:
            proc = subprocess.Popen([BRONZE, "serve"], env=e, stdout=fh, stderr=subprocess.STDOUT)
        rep = Replica(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + 90  # a liveness bound on a loaded machine, not a measure
        while proc.poll() is None:
            try:
                if httpx.get(rep.url + "/healthz", timeout=1).status_code == 200:
                    if "agent API not started" in log.read_text():  # a port race: try again
                        break
                    return rep
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError(f"replica {name} did not answer: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        _stop(proc)
    raise RuntimeError(f"replica {name} could not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, grace=15)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Replica, Replica, str, str]]:
    """A and B share the database, the data dir (secret key, fleet CA) and an admin token."""
    token = "brz_" + secrets.token_urlsafe(32)
    with fresh_database("postgres", tmp_path) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
        env.update(
            {
                "BRONZE_DATA_DIR": str(tmp_path / "data"),
                "BRONZE_DATABASE_URL": url,
                "BRONZE_ADMIN_TOKEN": token,
                "BRONZE_POWER_SYNC_ENABLED": "false",
                "BRONZE_AGENT_HEARTBEAT_INTERVAL": "1",
                "BRONZE_LOG_LEVEL": "info",
            }
        )
        started: list[subprocess.Popen[bytes]] = []
        try:
            a = _start(tmp_path, "a", env)
            started.append(a.proc)
            b = _start(tmp_path, "b", env, BRONZE_MIGRATE_ON_START="false")
            started.append(b.proc)
            yield a, b, token, url
        finally:
            for p in started:
                _stop(p)


def test_changes_on_one_replica_reach_an_agent_held_by_another(
    replicas: tuple[Replica, Replica, str, str], tmp_path: Path
) -> None:
    a, b, token, db_url = replicas
    ca = httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    cb = httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r = ca.post("/api/v1/machines", json={"name": "n1", "nics": [{"mac": "02:00:00:00:40:01"}]})
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    args = ca.post("/api/v1/machines/n1/enrollment-token").json()["kernel_args"]  # A's ports

    root = tmp_path / "n1" / "root"
    shutil.copytree(FIXTURES / "qemu-vm", root, symlinks=True)
    (root / "etc/bronze").mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "data" / "pki" / "ca.crt", root / "etc/bronze/ca.pem")
    (root / "proc/cmdline").write_text(f"console=ttyS0 {args}\n")
    with open(tmp_path / "agent.log", "ab") as fh:
        agent = subprocess.Popen(
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
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        eventually(lambda: ca.get("/api/v1/machines/n1/agent").json()["connected"], 30)
        assert ca.get("/api/v1/machines/n1/agent").json()["session"] == "this-replica"
        seen_by_b = cb.get("/api/v1/machines/n1/agent").json()  # from the database
        assert seen_by_b["connected"] is True and seen_by_b["session"] == "another-replica"

        # A config patch created on B: queued in the database, delivered by A, applied.
        r = cb.post(
            "/api/v1/config-patches",
            json={"name": "fleet", "scope": "fleet", "patch": {"hostname": "via-b"}},
        )
        assert r.status_code == 201, r.text
        assert (r.json()["pushed"], r.json()["queued"]) == (0, 1)
        eventually(lambda: (root / "etc/hostname").read_text() == "via-b\n", 20)
        eventually(lambda: cb.get("/api/v1/machines/n1/config").json()["in_sync"], 20)
        assert "command from another replica sent" in a.log.read_text()

        # Node ops stream back to the caller from the replica holding the session: B forwards
        # them to A (the URL A saved with the session) and relays the answer, streams included.
        r = cb.get("/api/v1/machines/n1/node/stats")
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
        assert r.headers["x-bronze-replica"] == a.url
        assert ca.get("/api/v1/machines/n1/node/stats").json()["ok"] is True
        with cb.stream(
            "GET",
            "/api/v1/machines/n1/node/logs",
            params={"follow": "true", "service": "chronyd", "tail_lines": 1},
        ) as st:
            assert st.status_code == 200 and st.headers["x-bronze-replica"] == a.url
            lines = st.iter_lines()
            assert "chronyd" in json.loads(next(lines))["data"]
            with (root / "var/log/bronze/chronyd.log").open("a") as fh:
                fh.write("through b\n")
            assert json.loads(next(lines)) == {"data": "through b\n"}
        # The caller's token is checked by both; a forwarded request is never forwarded again.
        r = httpx.get(
            b.url + "/api/v1/machines/n1/node/stats", headers={"Authorization": "Bearer brz_wrong"}
        )
        assert r.status_code == 401
        r = cb.get("/api/v1/machines/n1/node/stats", headers={"x-bronze-forwarded": "1"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "agent_on_other_replica"
        # A holder that does not answer: a precise 409, not a hang or a 500.
        engine = sqlalchemy.create_engine(db_url)
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.text("UPDATE agent_states SET replica_url = :u"),
                {"u": f"http://127.0.0.1:{free_port()}"},
            )
        try:
            r = cb.get("/api/v1/machines/n1/node/stats")
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "agent_on_other_replica" and err["details"] == {"machine_id": mid}
            assert "did not answer: ConnectError" in err["message"]
        finally:
            with engine.begin() as conn:
                conn.execute(
                    sqlalchemy.text("UPDATE agent_states SET replica_url = :u"), {"u": a.url}
                )
            engine.dispose()

        # try on B, confirmed on B: both travel through the database.
        r = cb.post(
            "/api/v1/config-patches",
            params={"mode": "try", "try_timeout_seconds": 60},
            json={"name": "trial", "scope": "fleet", "priority": 1, "patch": {"hostname": "tried"}},
        )
        assert r.json()["queued"] == 1
        eventually(lambda: (root / "var/lib/bronze/try.json").exists(), 20)
        r = cb.post("/api/v1/machines/n1/config/confirm")
        assert r.status_code == 202 and r.json()["delivery"] == "queued"
        eventually(lambda: not (root / "var/lib/bronze/try.json").exists(), 20)
        assert (root / "etc/hostname").read_text() == "tried\n"

        # A reboot requested on B.
        boot = ca.get("/api/v1/machines/n1/agent").json()["boot_id"]
        r = cb.post("/api/v1/machines/n1/reboot")
        assert r.status_code == 202 and r.json()["delivery"] == "queued"
        eventually(
            lambda: (
                (s := ca.get("/api/v1/machines/n1/agent").json())["connected"]
                and s["boot_id"] != boot
                and s["pending_commands"] == 0
            ),
            30,
        )

        # Replica A crashes: it cannot clear its claim on the session, so the claim lapses once
        # the session's heartbeats stop reaching the database, and B stops pointing at A.
        assert cb.get("/api/v1/machines/n1/agent").json()["session"] == "another-replica"
        a.proc.kill()
        a.proc.wait(5)
        eventually(lambda: cb.get("/api/v1/machines/n1/agent").json()["connected"] is False, 30)
        assert cb.get("/api/v1/machines/n1/agent").json()["session"] is None
        r = cb.get("/api/v1/machines/n1/node/stats")
        assert r.status_code == 409 and r.json()["error"]["code"] == "agent_unavailable", r.text
    finally:
        _stop(agent)
