"""A rollout survives ``kill -9``: of the only server (restarted on the same ports), and of the
replica holding the rollout lease while another replica (on PostgreSQL) takes over. Every machine
is upgraded exactly once (its own boot records say so) and none is skipped."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.peers.database import fresh_database
from tests.support.fleet import image_dir, make_image, start_fleet, wait_for
from tests.support.ports import free_port
from tests.support.procs import BRONZE, stop_process

TERMINAL = {"succeeded", "completed_with_failures", "failed", "aborted"}


def serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        proc = subprocess.Popen([BRONZE, "serve"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['BRONZE_API_PORT']}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"bronze serve exited: {log.read_text()[-3000:]}")
        try:
            return httpx.get(url + "/healthz", timeout=1).json()["components"]["agent_api"] == "ok"
        except (httpx.HTTPError, KeyError, ValueError):
            return False

    wait_for(up, 90, f"bronze serve on {url}")
    return proc


def base_env(tmp: Path, db_url: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env.update(
        {
            "BRONZE_DATA_DIR": str(tmp / "data"),
            "BRONZE_DATABASE_URL": db_url,
            "BRONZE_ADMIN_TOKEN": token,
            "BRONZE_POWER_SYNC_ENABLED": "false",
            "BRONZE_AGENT_HEARTBEAT_INTERVAL": "1",
            "BRONZE_ROLLOUT_INTERVAL": "0.2",
            "BRONZE_LOG_LEVEL": "info",
        }
    )
    return env


def with_ports(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "BRONZE_API_PORT": str(free_port()),
        "BRONZE_AGENT_ENROLL_PORT": str(free_port()),
        "BRONZE_AGENT_SESSION_PORT": str(free_port()),
    }


SLOW_REBOOT = ["--reboot-seconds", "2"]
"""A machine's reboot takes 2 s: a batch stays in flight long enough to be seen, and killed,
mid-way (an instant reboot lets the runner finish a batch within one poll of the test)."""


def client_for(env: dict[str, str], token: str) -> Callable[[], httpx.Client]:
    url = f"http://127.0.0.1:{env['BRONZE_API_PORT']}"
    return lambda: httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def upgrade(c: httpx.Client) -> str:
    r = c.post(
        "/api/v1/upgrades",
        json={
            "image": "os-2",
            "selector": "role=worker",
            "preserve": True,
            "batch_size": 2,
            "health_timeout_seconds": 120,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def in_batch(c: httpx.Client, rid: str, index: int) -> bool:
    r = c.get(f"/api/v1/upgrades/{rid}").json()
    return any(m["state"] == "active" for m in r["batches"][index]["machines"])


def finish(api: Callable[[], httpx.Client], rid: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        try:
            with api() as c:
                r = c.get(f"/api/v1/upgrades/{rid}").json()
        except httpx.HTTPError:
            return None
        return r if r["status"] in TERMINAL else None

    result = wait_for(done, 240, f"rollout {rid} to end")
    assert result is not None
    return result


def check_each_upgraded_once(fleet: Any, digest: str) -> None:
    for n in fleet.names:
        boots = [b["image"] for b in fleet.boots(n)]
        assert boots.count(digest) == 1, (n, fleet.boots(n))


def test_kill_9_and_restart_resumes(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    token = "brz_" + secrets.token_urlsafe(32)
    env = with_ports(base_env(tmp_path, f"sqlite:///{tmp_path / 'bronze.db'}", token))
    server = serve(env, tmp_path / "serve-1.log")
    procs.append(server)
    api = client_for(env, token)
    c = api()
    v1 = make_image(c, "os-1", "1.0")
    v2 = make_image(c, "os-2", "2.0")
    ca = (tmp_path / "data" / "pki" / "ca.crt").read_bytes()
    fleet = start_fleet(
        api,
        ca,
        tmp_path / "fleet",
        6,
        image_dir(c, v1, tmp_path / "v1"),
        lambda i: {"role": "worker"},
        procs,
        extra=SLOW_REBOOT,
    )
    rid = upgrade(c)
    wait_for(lambda: in_batch(c, rid, 1), 120, "batch 2 in flight")
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    restarted = serve(env, tmp_path / "serve-2.log")  # same ports, data dir and database
    procs.append(restarted)
    result = finish(api, rid)
    assert result["status"] == "succeeded", result
    assert result["counts"]["succeeded"] == 6
    check_each_upgraded_once(fleet, v2["digest"])


def test_lease_holder_dies_another_replica_finishes(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    token = "brz_" + secrets.token_urlsafe(32)
    with fresh_database("postgres", tmp_path) as url:
        env = base_env(tmp_path, url, token)
        env_a, env_b = with_ports(env), with_ports(env)
        env_b["BRONZE_MIGRATE_ON_START"] = "false"
        # Agents fetch images behind the "load balancer": here B, which outlives A.
        for e in (env_a, env_b):
            e["BRONZE_ASSET_BASE_URL"] = f"http://127.0.0.1:{env_b['BRONZE_API_PORT']}"
        a = serve(env_a, tmp_path / "a.log")  # first up: it takes the rollout lease
        procs.append(a)
        b = serve(env_b, tmp_path / "b.log")
        procs.append(b)
        api_a, api_b = client_for(env_a, token), client_for(env_b, token)
        c = api_b()
        v1 = make_image(c, "os-1", "1.0")
        v2 = make_image(c, "os-2", "2.0")
        ca = (tmp_path / "data" / "pki" / "ca.crt").read_bytes()
        # The agents hold their sessions with B; A runs the rollout and dies.
        fleet = start_fleet(
            api_b,
            ca,
            tmp_path / "fleet",
            6,
            image_dir(c, v1, tmp_path / "v1"),
            lambda i: {"role": "worker"},
            procs,
            extra=SLOW_REBOOT,
        )
        rid = upgrade(api_a())
        wait_for(lambda: in_batch(c, rid, 1), 120, "batch 2 in flight")
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        result = finish(api_b, rid)
        assert result["status"] == "succeeded", result
        check_each_upgraded_once(fleet, v2["digest"])
        for p in (b,):
            stop_process(p, grace=10)
