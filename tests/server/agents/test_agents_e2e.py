"""The agent plane wired into the server: a real uvicorn server with the agent API on free ports,
the database store, and a real ``bronze-agent`` process enrolled through the REST API."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.agents import BootstrapToken, PendingCommand
from server.agents.dbstore import DbAgentStore
from server.agents.store import SpentToken
from server.inventory import migrate
from server.inventory.db import Database
from tests.peers.apiserver import RunningServer, run_server
from tests.support.agentlab import boot_root, spawn_agent
from tests.support.wait import eventually


@pytest.fixture
def agent_api(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data",
        db_url,
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        agent_heartbeat_interval=1.0,
    ) as srv:
        yield srv


def _enrolled(
    srv: RunningServer, procs: list[subprocess.Popen[bytes]], tmp: Path
) -> tuple[Path, subprocess.Popen[bytes]]:
    """node-a (rack r1), enrolled through a REST-issued token, its agent connected."""
    c = srv.client()
    r = c.post(
        "/api/v1/machines",
        json={"name": "node-a", "nics": [{"mac": "02:00:00:00:01:01"}], "labels": {"rack": "r1"}},
    )
    assert r.status_code == 201, r.text
    tok = c.post("/api/v1/machines/node-a/enrollment-token", json={"boot_ref": "boot-1"})
    assert tok.status_code == 201, tok.text
    root = boot_root(srv, tmp, tok.json()["kernel_args"])
    proc = spawn_agent(root, procs)
    eventually(lambda: c.get("/api/v1/machines/node-a/agent").json()["connected"], 30)
    return root, proc


def _synced(c: httpx.Client) -> dict[str, Any]:
    cfg = c.get("/api/v1/machines/node-a/config").json()
    return dict(cfg) if cfg["in_sync"] else {}


def _layered_patches(c: httpx.Client, root: Path) -> dict[str, Any]:
    """A fleet patch, a selector patch on top, and node-a's own patch winning over both."""
    fleet = {"sysctls": {"vm.swappiness": "10"}, "files": {"/etc/motd": {"content": "hi\n"}}}
    r = c.post(
        "/api/v1/config-patches", json={"name": "fleet-base", "scope": "fleet", "patch": fleet}
    )
    assert r.status_code == 201, r.text
    assert r.json()["machines"] == 1 and r.json()["pushed"] == 1
    rack = {"hostname": "rack-host", "sysctls": {"vm.swappiness": "20"}}
    body = {"name": "rack-r1", "scope": "selector", "selector": "rack=r1", "patch": rack}
    assert c.post("/api/v1/config-patches", json=body).status_code == 201
    own = {
        "name": "node-a-own",
        "scope": "machine",
        "machine": "node-a",
        "patch": {"hostname": "node-a"},
    }
    assert c.post("/api/v1/config-patches", json=own).status_code == 201
    cfg = eventually(
        lambda: (x := _synced(c)) and x["config"].get("hostname") == "node-a" and x, 20
    )
    eventually(lambda: (root / "etc/hostname").read_text() == "node-a\n", 10)
    return dict(cfg)


def test_enrollment_reports_inventory(
    agent_api: RunningServer, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    c = agent_api.client()
    c.post("/api/v1/machines", json={"name": "pre", "nics": [{"mac": "02:00:00:00:01:09"}]})
    mid = c.get("/api/v1/machines/pre").json()["id"]
    assert c.get("/api/v1/machines/pre/agent").json() == {
        "machine_id": mid,
        "name": "pre",
        "enrolled": False,
        "connected": False,
        "session": None,
        "pending_commands": 0,
    }
    tok = c.post("/api/v1/machines/pre/enrollment-token", json={"boot_ref": "b"}).json()
    assert tok["kernel_args"].startswith(f"bronze.machine={mid} bronze.token={tok['token']} ")
    _enrolled(agent_api, procs, tmp_path)
    state = c.get("/api/v1/machines/node-a/agent").json()
    assert state["enrolled"] and state["certificate"]["serial"]
    assert state["boot_id"] and state["agent_version"]
    hw = c.get("/api/v1/machines/node-a").json()["hardware"]
    assert hw["smbios"]["vendor"] == "Dell Inc." and len(hw["disks"]) == 5
    cfg = c.get("/api/v1/machines/node-a/config").json()
    assert cfg["managed"] is False and cfg["config"] is None


def test_layered_patches_are_applied_with_provenance(
    agent_api: RunningServer, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    c = agent_api.client()
    root, _ = _enrolled(agent_api, procs, tmp_path)
    cfg = _layered_patches(c, root)
    assert cfg["applied_version"] == cfg["desired_version"] == cfg["version"]
    assert cfg["provenance"]["/hostname"] == "node-a-own"
    assert cfg["provenance"]["/sysctls/vm.swappiness"] == "rack-r1"
    assert cfg["patches"] == ["fleet-base", "node-a-own", "rack-r1"]
    assert (root / "etc/motd").read_text() == "hi\n"
    assert (root / "proc/sys/vm/swappiness").read_text() == "20\n"
    assert c.get("/api/v1/machines/node-a/config", params={"diff": "applied"}).json()["diff"] == []
    listed = c.get("/api/v1/config-patches").json()
    assert [p["name"] for p in listed] == ["fleet-base", "rack-r1", "node-a-own"]
    eventually(lambda: c.get("/api/v1/machines/node-a/agent").json()["config"]["in_sync"], 10)
    # Deleting the machine patch pushes the rack hostname.
    node_patch = next(p for p in listed if p["name"] == "node-a-own")
    r = c.delete(f"/api/v1/config-patches/{node_patch['id']}")
    assert r.status_code == 200 and r.json()["pushed"] == 1
    eventually(lambda: (root / "etc/hostname").read_text() == "rack-host\n", 20)
    assert c.delete(f"/api/v1/config-patches/{node_patch['id']}").status_code == 404


def test_invalid_patches_are_refused_with_the_path(agent_api: RunningServer) -> None:
    c = agent_api.client()
    good = {"name": "fleet-base", "scope": "fleet", "patch": {}}
    assert c.post("/api/v1/config-patches", json=good).status_code == 201
    bad_mtu = {"network": {"links": {"eth0": {"mtu": "big"}}}}
    r = c.post("/api/v1/config-patches", json={"name": "bad", "scope": "fleet", "patch": bad_mtu})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["path"] == "/network/links/eth0/mtu"
    r = c.post(
        "/api/v1/config-patches",
        json={"name": "bad", "scope": "selector", "selector": "rack in (", "patch": {}},
    )
    assert r.status_code == 422 and r.json()["error"]["details"] == {"field": "selector"}
    assert c.post("/api/v1/config-patches", json=good).status_code == 409
    assert len(c.get("/api/v1/config-patches").json()) == 1


def test_dry_run_shows_changes_and_what_needs_a_reboot(
    agent_api: RunningServer, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    c = agent_api.client()
    root, _ = _enrolled(agent_api, procs, tmp_path)
    cfg = _layered_patches(c, root)
    r = c.post(
        "/api/v1/machines/node-a/config/dry-run",
        json={"patch": {"kernel_args": ["quiet"], "hostname": None}},
    )
    assert r.status_code == 200, r.text
    dry = r.json()
    paths = {ch["path"]: ch["op"] for ch in dry["changes"]}
    assert paths == {"/kernel_args": "add", "/hostname": "remove"}  # applied last: null removes
    assert dry["reboot_required"] == ["/kernel_args"]
    assert dry["current_version"] == cfg["version"] != dry["version"]


def test_node_ops_reboot_and_disconnect(
    agent_api: RunningServer, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    c = agent_api.client()
    root, proc = _enrolled(agent_api, procs, tmp_path)
    _layered_patches(c, root)
    r = c.get("/api/v1/machines/node-a/node/stats")
    assert r.status_code == 200 and r.json()["data"]["memory_total_bytes"] > 0
    r = c.get("/api/v1/machines/node-a/node/logs", params={"service": "chronyd", "tail_lines": 3})
    assert r.json()["ok"] and r.json()["output"].count("\n") == 3
    assert c.get("/api/v1/machines/node-a/node/shell").status_code == 422
    # Reboot: a new boot id, the session comes back, still in sync.
    boot = c.get("/api/v1/machines/node-a/agent").json()["boot_id"]
    r = c.post("/api/v1/machines/node-a/reboot")
    assert r.status_code == 202 and r.json()["connected"] is True
    state = eventually(
        lambda: (
            (s := c.get("/api/v1/machines/node-a/agent").json())["connected"]
            and s["boot_id"] != boot
            and s
        ),
        30,
    )
    assert state["config"]["in_sync"]
    # The agent goes away: noticed and reported.
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    eventually(lambda: not c.get("/api/v1/machines/node-a/agent").json()["connected"], 15)
    assert c.get("/api/v1/machines/node-a/node/stats").status_code == 409
    events = {e["kind"] for e in c.get("/api/v1/machines/node-a/events").json()["items"]}
    assert {"agent.token.issued", "agent.reboot"} <= events


def test_maintenance_machine_gets_no_enrollment_token(agent_api: RunningServer) -> None:
    c = agent_api.client()
    c.post(
        "/api/v1/machines",
        json={"name": "m-maint", "nics": [{"mac": "02:00:00:00:01:02"}], "phase": "maintenance"},
    )
    r = c.post("/api/v1/machines/m-maint/enrollment-token")
    assert r.status_code == 409
    assert c.post("/api/v1/machines/nope/enrollment-token").status_code == 404


def test_db_store_tokens_pending_and_phases(tmp_path: Path, db_url: str) -> None:
    migrate.upgrade(db_url)
    db = Database.connect(db_url)
    store = DbAgentStore(db)
    from server.inventory.models import Machine

    with db.write() as s:
        s.add(
            Machine(id="00000000-0000-0000-0000-000000000001", name="a", phase="ready", hardware={})
        )
        s.add(
            Machine(
                id="00000000-0000-0000-0000-000000000002", name="b", phase="failed", hardware={}
            )
        )
    a, b = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"

    async def scenario() -> None:
        assert (await store.get_machine(a)).enrollment_allowed  # type: ignore[union-attr]
        assert not (await store.get_machine(b)).enrollment_allowed  # type: ignore[union-attr]
        assert await store.get_machine("missing") is None
        exp = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        await store.save_bootstrap_token(BootstrapToken(a, "h1", "boot-1", exp))
        await store.save_bootstrap_token(BootstrapToken(a, "h2", "boot-2", exp))  # replaces
        tok = await store.get_bootstrap_token(a)
        assert tok is not None and tok.boot_ref == "boot-2"
        assert tok.token_hash == "h2"  # noqa: S105
        assert abs((tok.expires_at - exp).total_seconds()) < 1
        # Compare-and-delete: concurrent redemptions of one token succeed once.
        results = await asyncio.gather(*[store.delete_bootstrap_token(a, "h2") for _ in range(8)])
        assert sorted(results) == [False] * 7 + [True]
        assert not await store.delete_bootstrap_token(a)
        await store.save_bootstrap_token(BootstrapToken(a, "h3", "boot-3", exp))
        assert not await store.delete_bootstrap_token(a, "other")
        assert await store.delete_bootstrap_token(a)
        # Compare-and-set: concurrent spends of one token succeed once; what the spending
        # enrollment left is read back; a new token replaces a spent one, unspent.
        await store.save_bootstrap_token(BootstrapToken(a, "h4", "boot-4", exp))
        spent = SpentToken(dt.datetime.now(dt.UTC), "k" * 64, "CERT")
        spends = [store.spend_bootstrap_token(a, "h4", spent) for _ in range(8)]
        assert sorted(await asyncio.gather(*spends)) == [False] * 7 + [True]
        assert not await store.spend_bootstrap_token(a, "other", spent)
        got = await store.get_bootstrap_token(a)
        assert got is not None and got.spent is not None
        assert (got.spent.key_sha256, got.spent.cert_pem) == ("k" * 64, "CERT")
        assert abs((got.spent.at - spent.at).total_seconds()) < 1
        await store.save_bootstrap_token(BootstrapToken(a, "h5", "boot-5", exp))
        assert (await store.get_bootstrap_token(a)).spent is None  # type: ignore[union-attr]
        assert await store.delete_bootstrap_token(a)

        t0 = dt.datetime.now(dt.UTC)
        for i in (2, 0, 1):
            await store.save_pending_command(
                a,
                PendingCommand(f"c{i}", "reboot", bytes([i, 0, 255]), t0 + dt.timedelta(seconds=i)),
            )
        assert [p.command_id for p in await store.list_pending_commands(a)] == ["c0", "c1", "c2"]
        assert (await store.list_pending_commands(a))[2].payload == b"\x02\x00\xff"
        await store.delete_pending_command(a, "c1")
        assert [p.command_id for p in await store.list_pending_commands(a)] == ["c0", "c2"]
        assert await store.list_pending_commands(b) == []
        assert await store.get_desired_config(a) is None  # no patches: unmanaged

    try:
        asyncio.run(scenario())
    finally:
        db.dispose()
