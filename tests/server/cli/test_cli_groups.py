"""Every REST resource has a ``bronze`` command group, exercised through the real console script
against a real server: operations, events, profiles, assets, config, agent; plus ``--version``,
tables that never cut identifiers, ``--no-wait``, and tokens written 0600."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
import typer.main

from server.cli.main import app
from tests.peers.apiserver import RunningServer, run_server
from tests.support.cli import run

# Every REST path -> the CLI command that covers it. Paths the firmware, ``bronze pxe`` or a
# probe call (never a person) map to None, with the reason.
RESOURCE_COMMANDS: dict[str, str | None] = {
    "/api/v1/machines": "machines list",
    "/api/v1/machines/{key}": "machines show",
    "/api/v1/machines/{key}/events": "machines events",
    "/api/v1/machines:import": "machines import",
    "/api/v1/machines/{key}/accept": "machines accept",
    "/api/v1/machines/{key}/inspect": "machines inspect",
    "/api/v1/inspect": "machines inspect",
    "/api/v1/machines/{key}/timeline": "machines timeline",
    "/api/v1/boot/timeline": "machines timeline",
    "/api/v1/events": "events list",
    "/api/v1/tokens": "token list",
    "/api/v1/tokens/{name}": "token revoke",
    "/api/v1/machines/{key}/power": "power",
    "/api/v1/power": "power",
    "/api/v1/machines/{key}/boot-device": "boot-device set",
    "/api/v1/operations": "operations list",
    "/api/v1/operations/{op_id}": "operations show",
    "/api/v1/profiles": "profiles list",
    "/api/v1/profiles/{name}": "profiles show",
    "/api/v1/assets": "assets list",
    "/api/v1/assets/{name}": "assets upload",
    "/api/v1/config-patches": "config patches list",
    "/api/v1/config-patches/{patch_id}": "config patches delete",
    "/api/v1/machines/{key}/config": "config show",
    "/api/v1/machines/{key}/config/dry-run": "config dry-run",
    "/api/v1/machines/{key}/config/confirm": "config confirm",
    "/api/v1/machines/{key}/enrollment-token": "agent enrollment-token",
    "/api/v1/machines/{key}/agent": "agent show",
    "/api/v1/machines/{key}/agent/revoke": "agent revoke",
    "/api/v1/machines/{key}/reboot": "node",
    "/api/v1/machines/{key}/node/{op}": "node",
    "/api/v1/images": "images list",
    "/api/v1/images/{name}": "images show",
    "/api/v1/images/{name}/manifest": "images sign",
    "/api/v1/images/{name}/signature": "images sign",
    "/api/v1/upgrades": "upgrade start",
    "/api/v1/upgrades/{rollout_id}": "upgrade status",
    "/api/v1/upgrades/{rollout_id}/pause": "upgrade pause",
    "/api/v1/upgrades/{rollout_id}/resume": "upgrade resume",
    "/api/v1/upgrades/{rollout_id}/abort": "upgrade abort",
    "/api/v1/provisions": "provision start",
    "/api/v1/provisions/{rollout_id}": "provision status",
    "/api/v1/provisions/{rollout_id}/pause": "provision pause",
    "/api/v1/provisions/{rollout_id}/resume": "provision resume",
    "/api/v1/provisions/{rollout_id}/cancel": "provision cancel",
    "/api/v1/machines/{key}/deprovision": "provision deprovision",
    "/api/v1/deprovisions": "provision deprovision",
    "/api/v1/deprovisions/{rollout_id}": "provision deprovision",
    "/api/v1/boot/decide": None,  # bronze pxe asks it (role boot)
    "/boot.ipxe": None,  # iPXE firmware fetches it
    "/assets/{name}": None,  # firmware downloads kernels here
    "/healthz": None,  # load balancers and probes
}


def _cli_commands() -> set[str]:
    def walk(cmd: object, prefix: str) -> set[str]:
        found = {prefix.strip()}
        for name, sub in getattr(cmd, "commands", {}).items():
            found |= walk(sub, f"{prefix} {name}")
        return found

    return walk(typer.main.get_command(app), "")


def test_every_rest_resource_has_a_cli_command(api_sqlite: RunningServer) -> None:
    paths = set(httpx.get(f"{api_sqlite.url}/openapi.json").json()["paths"])
    unmapped = paths - set(RESOURCE_COMMANDS)
    assert unmapped == set(), "map these paths to a CLI command in RESOURCE_COMMANDS"
    commands = _cli_commands()
    missing = {p: c for p, c in RESOURCE_COMMANDS.items() if c is not None and c not in commands}
    assert missing == {}


def test_version(api_sqlite: RunningServer, tmp_path: Path) -> None:
    r = run(api_sqlite, tmp_path, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"bronze {version('bronze')}"


LONG_MAC = "02:00:00:aa:bb:01"


def test_narrow_table_never_cuts_a_mac_or_address(
    api_sqlite: RunningServer, tmp_path: Path
) -> None:
    labels = [f"--label=k{i}={'x' * 60}" for i in range(3)]
    r = run(
        api_sqlite,
        tmp_path,
        "machines",
        "create",
        "node-with-a-fairly-long-name-01",
        "--mac",
        LONG_MAC,
        "--mac",
        "02:00:00:aa:bb:02",
        "--bmc-driver",
        "redfish",
        "--bmc-address",
        "10.200.200.200:16623",
        *labels,
        "-o",
        "json",
    )
    assert r.returncode == 0, r.stderr
    r = run(api_sqlite, tmp_path, "machines", "list", extra_env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert LONG_MAC in r.stdout and "02:00:00:aa:bb:02" in r.stdout
    assert "10.200.200.200:16623" in r.stdout
    assert "node-with-a-fairly-long-name-01" in r.stdout and "…" not in r.stdout
    assert "LABELS" in r.stderr  # dropped, and said so (on stderr: stdout stays the table)
    r = run(
        api_sqlite,
        tmp_path,
        "machines",
        "events",
        "node-with-a-fairly-long-name-01",
        extra_env={"COLUMNS": "80"},
    )
    stamp = re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", r.stdout)
    assert stamp is not None, r.stdout  # a whole instant on one line


def test_token_output_file_is_0600(api_sqlite: RunningServer, tmp_path: Path) -> None:
    target = tmp_path / "ci.token"
    target.write_text("old\n")
    target.chmod(0o644)
    r = run(
        api_sqlite,
        tmp_path,
        "token",
        "create",
        "--name",
        "ci",
        "--role",
        "reader",
        "--output-file",
        str(target),
    )
    assert r.returncode == 0, r.stderr
    token = target.read_text().strip()
    assert token.startswith("brz_") and token not in r.stdout + r.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert run(api_sqlite, tmp_path, "machines", "list", token=token).returncode == 0
    r = run(
        api_sqlite,
        tmp_path,
        "token",
        "create",
        "--name",
        "ci2",
        "--role",
        "reader",
        "--output-file",
        str(tmp_path / "t2"),
        "-o",
        "json",
    )
    assert json.loads(r.stdout)["token"] is None
    assert stat.S_IMODE((tmp_path / "t2").stat().st_mode) == 0o600


def test_power_needs_machines_or_selector(api_sqlite: RunningServer, tmp_path: Path) -> None:
    r = run(api_sqlite, tmp_path, "power", "on")
    assert r.returncode == 1 and r.stderr.strip() == "error: give machine names or --selector"
    r = run(api_sqlite, tmp_path, "power", "on", "m1", "-l", "rack=r1")
    assert r.stderr.strip() == "error: give machine names or --selector, not both"


@pytest.fixture
def api_local_bmc(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data", sqlite_url, bmc_networks=["127.0.0.0/8"], bmc_ports=["1-65535"]
    ) as srv:
        yield srv


def _machine_with_dead_bmc(
    api: RunningServer, tmp_path: Path, name: str, mac: str = "02:00:00:00:0e:01"
) -> None:
    # A BMC on a closed local port: the operation is accepted, then fails (no packet leaves).
    r = run(
        api,
        tmp_path,
        "machines",
        "create",
        name,
        "--mac",
        mac,
        "--bmc-driver",
        "redfish",
        "--bmc-address",
        "127.0.0.1:1",
        "--bmc-username",
        "u",
    )
    assert r.returncode == 0, r.stderr


def test_no_wait_prints_the_operation_then_operations_commands(
    api_local_bmc: RunningServer, tmp_path: Path
) -> None:
    api_sqlite = api_local_bmc
    _machine_with_dead_bmc(api_sqlite, tmp_path, "m1")
    r = run(api_sqlite, tmp_path, "power", "on", "m1", "--no-wait")
    assert r.returncode == 0, r.stderr
    op_id = re.fullmatch(r"operation (\S+) (queued|running) \(1 machines\)\n", r.stdout)
    assert op_id is not None, r.stdout
    op = op_id.group(1)
    _machine_with_dead_bmc(api_sqlite, tmp_path, "m2", "02:00:00:00:0e:02")
    r = run(api_sqlite, tmp_path, "power", "off", "m2", "--no-wait", "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["id"] != op

    # wait: plain progress lines on a non-terminal stderr, the result table on stdout.
    r = run(api_sqlite, tmp_path, "operations", "wait", op)
    assert r.returncode == 1  # the BMC is unreachable: the operation failed
    assert f"operation {op} on: failed" in r.stderr and "m1" in r.stdout
    r = run(api_sqlite, tmp_path, "operations", "wait", op, "-o", "json")
    assert r.stderr == "" and json.loads(r.stdout)[0]["status"] == "failed"
    r = run(api_sqlite, tmp_path, "operations", "show", op, "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["items"][0]["machine"] == "m1"
    r = run(api_sqlite, tmp_path, "operations", "list", "-o", "json")
    assert op in [o["id"] for o in json.loads(r.stdout)]
    r = run(api_sqlite, tmp_path, "operations", "list")
    assert op in r.stdout


def test_profiles_assets_events(api_sqlite: RunningServer, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(4096))
    r = run(api_sqlite, tmp_path, "assets", "upload", str(kernel), "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sha256"] == hashlib.sha256(kernel.read_bytes()).hexdigest()
    listed = json.loads(run(api_sqlite, tmp_path, "assets", "list", "-o", "json").stdout)
    assert [a["name"] for a in listed] == ["vmlinuz"]
    r = run(
        api_sqlite,
        tmp_path,
        "profiles",
        "create",
        "base",
        "--kernel",
        "vmlinuz",
        "--arg",
        "console=ttyS0",
        "-l",
        "rack=r1",
    )
    assert r.returncode == 0 and "base" in r.stdout, r.stderr
    r = run(api_sqlite, tmp_path, "assets", "delete", "vmlinuz")
    assert r.returncode == 1 and "used by profile(s) base" in r.stderr
    r = run(
        api_sqlite, tmp_path, "profiles", "replace", "base", "--kernel", "vmlinuz", "-o", "json"
    )
    assert json.loads(r.stdout)["selector"] == ""
    shown = json.loads(run(api_sqlite, tmp_path, "profiles", "show", "base", "-o", "json").stdout)
    assert shown["kernel"] == "vmlinuz"
    assert run(api_sqlite, tmp_path, "profiles", "delete", "base").returncode == 0
    assert run(api_sqlite, tmp_path, "assets", "delete", "vmlinuz").returncode == 0
    assert json.loads(run(api_sqlite, tmp_path, "profiles", "list", "-o", "json").stdout) == []
    r = run(api_sqlite, tmp_path, "events", "list", "--kind", "boot", "-o", "json")
    kinds = [e["kind"] for e in json.loads(r.stdout)]
    assert kinds[0] == "boot.asset.deleted" and "boot.profile.created" in kinds


def test_config_and_agent_groups(api_sqlite: RunningServer, tmp_path: Path) -> None:
    assert (
        run(
            api_sqlite,
            tmp_path,
            "machines",
            "create",
            "c1",
            "--mac",
            "02:00:00:00:0c:01",
            "--label",
            "rack=r1",
        ).returncode
        == 0
    )
    patch = tmp_path / "p.json"
    patch.write_text(json.dumps({"hostname": "c1-host"}))
    r = run(
        api_sqlite,
        tmp_path,
        "config",
        "patches",
        "create",
        "names",
        "--scope",
        "selector",
        "-l",
        "rack=r1",
        "--patch-file",
        str(patch),
        "-o",
        "json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["machines"] == 1
    r = run(api_sqlite, tmp_path, "config", "patches", "list")
    assert "names" in r.stdout and "rack=r1" in r.stdout
    cfg = json.loads(run(api_sqlite, tmp_path, "config", "show", "c1").stdout)
    assert cfg["config"]["hostname"] == "c1-host" and cfg["patches"] == ["names"]
    patch.write_text(json.dumps({"hostname": "other"}))
    r = run(api_sqlite, tmp_path, "config", "dry-run", "c1", "--patch-file", str(patch))
    assert r.returncode == 0, r.stderr
    assert [c["path"] for c in json.loads(r.stdout)["changes"]] == ["/hostname"]
    r = run(api_sqlite, tmp_path, "config", "patches", "delete", "names")
    assert r.returncode == 0, r.stderr

    r = run(api_sqlite, tmp_path, "agent", "show", "c1", "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["enrolled"] is False
    out = tmp_path / "enroll.token"
    r = run(api_sqlite, tmp_path, "agent", "enrollment-token", "c1", "--output-file", str(out))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text().strip() not in r.stdout


def test_provision_group(api_sqlite: RunningServer, tmp_path: Path) -> None:
    """plan (nothing written), start, status in both outputs, cancel, and deprovision, through
    the CLI against a real server. Machines without a BMC: the plan says an operator powers
    them on."""
    c = api_sqlite.client()
    kernel = b"k" * 4096
    assert c.put(
        "/api/v1/assets/vmlinuz-p",
        params={"sha256": hashlib.sha256(kernel).hexdigest()},
        content=kernel,
    ).is_success
    assert c.post(
        "/api/v1/images", json={"name": "os-p", "version": "1", "kernel": "vmlinuz-p"}
    ).is_success
    for i in range(2):
        body = {"name": f"p{i}", "nics": [{"mac": f"02:00:00:0c:00:0{i}"}], "labels": {"r": "x"}}
        assert c.post("/api/v1/machines", json=body).is_success
    args = ["--image", "os-p", "-l", "r=x", "--disk", "/dev/vda"]
    r = run(api_sqlite, tmp_path, "provision", "plan", *args, "--expect", "nics >= 1")
    assert r.returncode == 0, r.stderr
    assert "operator powers on" in r.stdout and "install to /dev/vda" in r.stdout
    bad = run(api_sqlite, tmp_path, "provision", "plan", *args, "--expect", "ram >= 1")
    assert bad.returncode == 1 and "unknown fact 'ram'" in bad.stderr
    r = run(api_sqlite, tmp_path, "provision", "start", *args, "-o", "json")
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)[0]["id"]
    shown = json.loads(run(api_sqlite, tmp_path, "provision", "status", rid, "-o", "json").stdout)
    assert shown["kind"] == "provision" and shown["spec"]["install"] == {"disk": "/dev/vda"}
    table = run(api_sqlite, tmp_path, "provision", "status", rid).stdout
    assert rid in table and "p0" in table and "p1" in table
    r = run(api_sqlite, tmp_path, "provision", "cancel", rid, "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["status"] in ("aborting", "aborted")
    r = run(api_sqlite, tmp_path, "provision", "deprovision", "p0", "--wipe", "quick")
    assert r.returncode == 1  # p0 is registered (or still provisioning, held by the rollout)
