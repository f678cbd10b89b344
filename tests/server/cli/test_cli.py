"""The ``bronze`` CLI through its console-script entry point, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.peers.apiserver import RunningServer
from tests.support.cli import BRONZE, run


def test_machine_lifecycle_through_cli(api_sqlite: RunningServer, tmp_path: Path) -> None:
    pw = tmp_path / "bmc.pw"
    pw.write_text("Cli-Canary-1\n")
    r = run(
        api_sqlite,
        tmp_path,
        "machines",
        "create",
        "node-1",
        "--mac",
        "AA-BB-CC-00-00-10",
        "--label",
        "rack=r1",
        "--label",
        "role=worker",
        "--bmc-driver",
        "ipmi",
        "--bmc-address",
        "10.0.0.5",
        "--bmc-username",
        "admin",
        "--bmc-password-file",
        str(pw),
    )
    assert r.returncode == 0, r.stderr
    assert (
        "node-1" in r.stdout and "aa:bb:cc:00:00:10" in r.stdout and "Cli-Canary-1" not in r.stdout
    )
    r = run(
        api_sqlite,
        tmp_path,
        "machines",
        "create",
        "node-2",
        "--mac",
        "02:00:00:00:00:11@10.9.0.11",
        "--mac",
        "02:00:00:00:00:12",
        "--label",
        "rack=r2",
        "-o",
        "json",
    )
    assert r.returncode == 0, r.stderr
    assert [(n["mac"], n["ip"]) for n in json.loads(r.stdout)["nics"]] == [
        ("02:00:00:00:00:11", "10.9.0.11"),
        ("02:00:00:00:00:12", None),
    ]
    r = run(
        api_sqlite, tmp_path, "machines", "create", "node-3", "--mac", "02:00:00:00:00:13@10.9.0"
    )
    assert r.returncode != 0 and "ip" in r.stderr and len(r.stderr.strip().splitlines()) == 1, (
        r.stderr
    )

    r = run(api_sqlite, tmp_path, "machines", "list", "-l", "rack=r1", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in json.loads(r.stdout)] == ["node-1"]
    r = run(api_sqlite, tmp_path, "machines", "list")
    assert "node-1" in r.stdout and "node-2" in r.stdout and "NAME" in r.stdout

    r = run(
        api_sqlite,
        tmp_path,
        "machines",
        "update",
        "node-1",
        "--label",
        "rack=r9",
        "--remove-label",
        "role",
        "-o",
        "json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["labels"] == {"rack": "r9"}
    shown = json.loads(run(api_sqlite, tmp_path, "machines", "show", "node-1").stdout)
    assert shown["bmc"]["has_password"] is True and "Cli-Canary-1" not in json.dumps(shown)

    r = run(api_sqlite, tmp_path, "machines", "events", "node-1", "-o", "json")
    assert [e["kind"] for e in json.loads(r.stdout)] == ["machine.updated", "machine.created"]
    assert run(api_sqlite, tmp_path, "machines", "delete", "node-1").returncode == 0
    r = run(api_sqlite, tmp_path, "machines", "show", "node-1")
    assert (
        r.returncode == 1 and r.stderr.strip() == "error: 404 not_found: machine 'node-1' not found"
    )


def test_cli_errors_are_one_line(api_sqlite: RunningServer, tmp_path: Path) -> None:
    r = run(api_sqlite, tmp_path, "machines", "create", "bad_name", "--mac", "nope")
    assert (
        r.returncode == 1
        and r.stderr.count("\n") == 1
        and r.stderr.startswith("error: 422 invalid")
    )
    r = run(api_sqlite, tmp_path, "machines", "list", token="brz_wrong")  # noqa: S106 - wrong on purpose
    assert r.returncode == 1 and "401 unauthenticated" in r.stderr and "Traceback" not in r.stderr
    r = run(
        api_sqlite, tmp_path, "machines", "list", extra_env={"BRONZE_URL": "http://127.0.0.1:1"}
    )
    assert r.returncode == 1 and r.stderr.startswith("error: cannot reach http://127.0.0.1:1")
    r = run(api_sqlite, tmp_path, "machines", "list", "--sort", "bmc_password")
    assert r.returncode == 1 and "cannot sort by 'bmc_password'" in r.stderr


def test_tokens_through_cli(api_sqlite: RunningServer, tmp_path: Path) -> None:
    r = run(api_sqlite, tmp_path, "token", "create", "--role", "operator", "--name", "ci")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("brz_") and len(r.stdout.splitlines()) == 1
    assert run(api_sqlite, tmp_path, "machines", "list", token=token).returncode == 0
    r = run(api_sqlite, tmp_path, "token", "create", "--role", "reader", "--name", "x", token=token)
    assert r.returncode == 1 and "403 forbidden" in r.stderr
    listed = json.loads(run(api_sqlite, tmp_path, "token", "list", "-o", "json").stdout)
    assert {t["name"] for t in listed} == {"bootstrap-admin", "ci"} and token not in json.dumps(
        listed
    )
    assert run(api_sqlite, tmp_path, "token", "revoke", "ci").returncode == 0
    assert run(api_sqlite, tmp_path, "machines", "list", token=token).returncode == 1


def test_config_file_supplies_url_and_token(api_sqlite: RunningServer, tmp_path: Path) -> None:
    tok = tmp_path / "t"
    tok.write_text(api_sqlite.admin_token)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'url = "{api_sqlite.url}"\ntoken_file = "{tok}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env["BRONZE_CONFIG"] = str(cfg)
    env["BRONZE_DATA_DIR"] = str(tmp_path / "no-data")
    r = subprocess.run(
        [BRONZE, "machines", "list", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
