"""First start: data dir, key and admin token files; seeding from the environment; `bronze serve`
and `bronze db upgrade` as real processes."""

from __future__ import annotations

import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, inspect

from server.app import create_app
from server.settings import ServerSettings
from tests.peers.apiserver import run_server
from tests.support.ports import free_port

BRONZE = str(Path(sys.executable).with_name("bronze"))


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_first_start_writes_secret_files_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = create_app(ServerSettings(data_dir=data))
    token = (data / "admin.token").read_text().strip()
    assert token.startswith("brz_")
    assert (
        mode(data / "admin.token") == 0o600
        and mode(data / "secret.key") == 0o600
        and mode(data) == 0o700
    )
    key = (data / "secret.key").read_bytes()
    app.state.ctx.db.dispose()
    # A second start keeps the key and does not mint another admin token.
    app = create_app(ServerSettings(data_dir=data))
    assert (data / "admin.token").read_text().strip() == token and (
        data / "secret.key"
    ).read_bytes() == key
    app.state.ctx.db.dispose()


def test_admin_token_seeded_from_env(tmp_path: Path) -> None:
    seeded = "brz_" + "s" * 43
    app = create_app(ServerSettings(data_dir=tmp_path, admin_token=seeded))
    assert not (tmp_path / "admin.token").exists()
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        assert (
            c.get("/api/v1/tokens", headers={"Authorization": f"Bearer {seeded}"}).status_code
            == 200
        )
    app.state.ctx.db.dispose()
    rotated = "brz_" + "r" * 43
    app = create_app(ServerSettings(data_dir=tmp_path, admin_token=rotated))
    with TestClient(app) as c:
        assert (
            c.get("/api/v1/tokens", headers={"Authorization": f"Bearer {seeded}"}).status_code
            == 401
        )
        assert (
            c.get("/api/v1/tokens", headers={"Authorization": f"Bearer {rotated}"}).status_code
            == 200
        )
    app.state.ctx.db.dispose()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env.update({"BRONZE_DATA_DIR": str(tmp_path / "data"), **extra})
    return env


def test_db_upgrade_command(db_url: str, tmp_path: Path) -> None:
    r = subprocess.run(
        [BRONZE, "db", "upgrade"],
        env=_env(tmp_path, BRONZE_DATABASE_URL=db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    engine = create_engine(db_url)
    assert "machines" in inspect(engine).get_table_names()
    engine.dispose()
    r = subprocess.run(
        [BRONZE, "db", "upgrade"],
        env=_env(tmp_path, BRONZE_DATABASE_URL="sqlite:////nonexistent/x/y.db"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        r.returncode == 1
        and r.stderr.startswith("error: migration failed")
        and "Traceback" not in r.stderr
    )


def test_bronze_serve_with_no_config(tmp_path: Path) -> None:
    """The README's first command, minus the install: defaults only (data dir, SQLite, loopback)."""
    port = free_port()
    env = _env(tmp_path, BRONZE_API_PORT=str(port))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(hard, 256)  # the usual soft limit (1024 under systemd) is far below a fleet
    # NOTE: a shell lowers the limit, not preexec_fn: a Python-level fork of this process (with
    # gRPC threads from earlier tests) can abort the child in gRPC's fork handlers before exec.
    proc = subprocess.Popen(
        ["sh", "-c", f'ulimit -Sn {low} && exec "$0" serve', BRONZE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "bronze serve did not answer /healthz"
            time.sleep(0.1)
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        assert (tmp_path / "data" / "bronze.db").exists()
        r = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/machines", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            assert token.encode() not in fh.read()
        # Every kept BMC session, agent stream and transfer holds a descriptor: serve raises
        # its soft open-files limit to the hard one.
        assert resource.prlimit(proc.pid, resource.RLIMIT_NOFILE) == (hard, hard) != (low, hard)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert token not in out  # the token never reaches the log


def test_docker_compose_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[3]
    r = subprocess.run(
        ["docker-compose", "-f", str(root / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        ["docker-compose", "-f", str(root / "docker-compose.yml"), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert {"postgres", "bronze"} <= set(r.stdout.split())


def test_settings_from_environment(monkeypatch: object) -> None:
    mp = monkeypatch  # type: ignore[assignment]
    mp.setenv("BRONZE_SECRET_KEY", "")  # compose passes empty values through
    mp.setenv("BRONZE_BMC_NETWORKS", "10.0.0.0/8, 127.0.0.0/8")
    mp.setenv("BRONZE_API_PORT", "9090")
    s = ServerSettings()
    assert (
        s.secret_key is None
        and s.bmc_networks == ["10.0.0.0/8", "127.0.0.0/8"]
        and s.api_port == 9090
    )
    mp.setenv("BRONZE_BMC_NETWORKS", "not-a-cidr")
    with pytest.raises(ValidationError):
        ServerSettings()


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    missing = [
        f"BRONZE_{name.upper()}"
        for name in ServerSettings.model_fields
        if f"`BRONZE_{name.upper()}`" not in readme
    ]
    assert missing == [], f"settings missing from the README's configuration reference: {missing}"


def test_healthz_says_which_plane_did_not_start(tmp_path: Path, sqlite_url: str) -> None:
    """A taken agent port: the REST API still serves, /healthz says degraded and why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with run_server(
            tmp_path / "data",
            sqlite_url,
            agent_api_enabled=True,
            agent_enroll_port=port,
            agent_session_port=0,
        ) as srv:
            r = httpx.get(srv.url + "/healthz")
            assert r.status_code == 200
            body = r.json()
            assert body["status"] == "degraded" and body["components"]["boot_plane"] == "disabled"
            assert body["components"]["agent_api"].startswith("failed: ")
            assert srv.client().get("/api/v1/machines").status_code == 200
    with run_server(
        tmp_path / "data2",
        sqlite_url.replace(".db", "-2.db"),
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
    ) as srv:
        assert httpx.get(srv.url + "/healthz").json() == {
            "status": "ok",
            "components": {"agent_api": "ok", "boot_plane": "disabled", "pki": "ok"},
        }


def test_advertise_url_default_and_bad_values() -> None:
    assert ServerSettings(api_port=9000).effective_advertise_url == "http://127.0.0.1:9000"
    assert ServerSettings(api_host="::1").effective_advertise_url == "http://[::1]:8080"
    assert ServerSettings(api_host="0.0.0.0").effective_advertise_url is None  # noqa: S104
    given = ServerSettings(api_host="0.0.0.0", api_advertise_url="https://r1.example:8443/")  # noqa: S104
    assert given.effective_advertise_url == "https://r1.example:8443"
    for bad in ("ftp://r1", "http://r1/api", "http://u:p@r1", "r1:8080", "http://r1?x=1"):
        with pytest.raises(ValidationError, match="api_advertise_url"):
            ServerSettings(api_advertise_url=bad)


VAULT_TOKEN = "Zm9vYmFyLXZhdWx0LXNlY3JldC0xMjM0NTY3ODkw+/="  # noqa: S105 - 44 chars, no brz_ prefix


def test_admin_token_of_the_operators_choosing_is_accepted(tmp_path: Path, db_url: str) -> None:
    """Issue 10.8: a BRONZE_ADMIN_TOKEN without the ``brz_`` prefix was stored and then refused
    on every request."""
    with run_server(tmp_path / "data", db_url, admin_token=VAULT_TOKEN) as srv:
        c = srv.client()
        r = c.get("/api/v1/tokens")
        assert r.status_code == 200, r.text
        assert [t["name"] for t in r.json()] == ["bootstrap-admin"]
        # and it may do what an admin does: make a token, which then works too
        r = c.post("/api/v1/tokens", json={"name": "ci", "role": "reader"})
        assert r.status_code == 201, r.text
        other = httpx.get(
            f"{srv.url}/api/v1/machines",
            headers={"Authorization": f"Bearer {r.json()['token']}"},
        )
        assert other.status_code == 200
        bad = httpx.get(
            f"{srv.url}/api/v1/tokens", headers={"Authorization": f"Bearer {VAULT_TOKEN[:-1]}x"}
        )
        assert bad.status_code == 401
    assert not (tmp_path / "data" / "admin.token").exists()


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (VAULT_TOKEN, None),
        ("brz_" + "a" * 43, None),
        ("x" * 32, None),
        ("x" * 31, "at least 32"),
        ("x" * 129, "at most 128"),
        ("x" * 20 + " " + "y" * 20, "printable ASCII without spaces"),
        ("x" * 40 + "\n", "printable ASCII without spaces"),
        ("é" * 40, "printable ASCII without spaces"),
    ],
    ids=["vault", "brz", "min", "short", "long", "space", "newline", "non-ascii"],
)
def test_admin_token_problem(token: str, problem: str | None) -> None:
    from server.settings import admin_token_problem

    got = admin_token_problem(token)
    assert (got is None) if problem is None else (got is not None and problem in got)
    assert got is None or token not in got


def test_bronze_serve_refuses_a_short_admin_token(tmp_path: Path) -> None:
    secret = "short-but-secret"  # noqa: S105 - a test value
    r = subprocess.run(
        [BRONZE, "serve"],
        env=_env(tmp_path, BRONZE_ADMIN_TOKEN=secret, BRONZE_API_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "BRONZE_ADMIN_TOKEN is 16 characters long; it must have at least 32" in r.stderr
    assert secret not in r.stderr + r.stdout and "Traceback" not in r.stderr
