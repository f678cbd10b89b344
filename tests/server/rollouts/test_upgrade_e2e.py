"""Rolling upgrades end to end: a real server (SQLite and PostgreSQL), real gRPC sessions, and
simulated machines whose A/B slots are real sandbox disks (``agent.install``)."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.fleet import Fleet, image_dir, make_image, start_fleet, wait_for

TERMINAL = {"succeeded", "completed_with_failures", "failed", "aborted"}


@pytest.fixture
def srv(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data",
        db_url,
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        agent_heartbeat_interval=1.0,
        rollout_interval=0.2,
    ) as s:
        yield s


def finish(srv: RunningServer, rollout_id: str, timeout: float = 240) -> dict[str, Any]:
    c = srv.client()
    return wait_for(
        lambda: (r := c.get(f"/api/v1/upgrades/{rollout_id}").json())["status"] in TERMINAL and r,
        timeout,
        f"rollout {rollout_id} to end",
    )


def sentinel(fleet: Fleet, name: str) -> str:
    data = f"precious data of {name}\n".encode() * 1000
    (fleet.ephemeral(name) / "sentinel").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_rolling_upgrade_keeps_ephemeral(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    v1 = make_image(c, "os-1", "1.0")
    v2 = make_image(c, "os-2", "2.0")
    fleet = start_fleet(
        srv.client,
        srv.app.state.agent_api.ca.cert_pem,
        tmp_path / "fleet",
        20,
        image_dir(c, v1, tmp_path / "v1"),
        lambda i: {"rack": f"r{i % 5}", "role": "worker"},
        procs,
    )
    assert {fleet.agent(n)["os"]["image_digest"] for n in fleet.names} == {v1["digest"]}
    sums = {n: sentinel(fleet, n) for n in fleet.names}

    plan = c.post(
        "/api/v1/upgrades?dry_run=true",
        json={
            "image": "os-2",
            "selector": "role=worker",
            "preserve": True,
            "batch_size": 4,
            "failure_domain": "rack",
        },
    )
    assert plan.status_code == 200, plan.text
    assert [len(b["machines"]) for b in plan.json()["batches"]] == [4] * 5
    assert all(
        len({fleet.ids[m["name"]][:0] + m["name"] for m in b["machines"]}) == 4
        for b in plan.json()["batches"]
    )
    assert c.get("/api/v1/upgrades").json()["items"] == []  # the dry run wrote nothing

    r = c.post(
        "/api/v1/upgrades",
        json={
            "image": "os-2",
            "selector": "role=worker",
            "preserve": True,
            "batch_size": 4,
            "failure_domain": "rack",
            "health_timeout_seconds": 60,
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["preserve"] is True
    overlap = c.post(
        "/api/v1/upgrades", json={"image": "os-2", "selector": "rack=r0", "preserve": True}
    )
    assert overlap.status_code == 409 and r.json()["id"] in overlap.json()["error"]["message"]

    done = finish(srv, r.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["counts"]["succeeded"] == 20
    for n in fleet.names:
        assert hashlib.sha256((fleet.ephemeral(n) / "sentinel").read_bytes()).hexdigest() == sums[n]
        boots = fleet.boots(n)
        assert [b["image"] for b in boots].count(v2["digest"]) == 1, (n, boots)
        os_ = fleet.agent(n)["os"]
        assert os_ == {"image_digest": v2["digest"], "slot": "B", "last_good_digest": v2["digest"]}
        m = c.get(f"/api/v1/machines/{n}").json()
        assert m["phase"] == "ready" and m["image"] == "os-2", m
    # Batches never overlapped: each machine's upgrade started after the previous batch ended.
    events = c.get("/api/v1/events", params={"kind": "rollout", "limit": 1000}).json()["items"]
    kinds = [e["kind"] for e in events]
    assert kinds.count("rollout.machine.started") == 20
    assert kinds.count("rollout.machine.succeeded") == 20
    # Never two racks at once: every machine of a rack finished before the next rack started.
    rack = {n: f"r{int(n[1:]) % 5}" for n in fleet.names}
    spans: dict[str, list[str]] = {}
    for e in events:
        if e["kind"] in ("rollout.machine.started", "rollout.machine.succeeded"):
            spans.setdefault(rack[e["machine_name"]], []).append(e["created_at"])
    order = sorted(spans, key=lambda r: min(spans[r]))
    for earlier, later in zip(order, order[1:], strict=False):
        assert max(spans[earlier]) <= min(spans[later]), (earlier, later, spans)


def test_preserve_false_wipes_ephemeral_after_the_new_slot_boots(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    v1 = make_image(c, "os-1", "1.0")
    make_image(c, "os-2", "2.0")
    fleet = start_fleet(
        srv.client,
        srv.app.state.agent_api.ca.cert_pem,
        tmp_path / "fleet",
        2,
        image_dir(c, v1, tmp_path / "v1"),
        lambda i: {"role": "worker"},
        procs,
    )
    for n in fleet.names:
        sentinel(fleet, n)
    r = c.post(
        "/api/v1/upgrades",
        json={"image": "os-2", "selector": "role=worker", "preserve": False, "batch_size": 2},
    )
    assert r.json()["preserve"] is False
    assert finish(srv, r.json()["id"])["status"] == "succeeded"
    for n in fleet.names:
        assert not (fleet.ephemeral(n) / "sentinel").exists()


def test_unhealthy_image_falls_back_and_halts_at_the_budget(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    v1 = make_image(c, "os-1", "1.0")
    v2 = make_image(c, "os-2", "2.0")
    bad = make_image(c, "os-bad", "3.0", ["bronze.sim=unhealthy"])
    fleet = start_fleet(
        srv.client,
        srv.app.state.agent_api.ca.cert_pem,
        tmp_path / "fleet",
        4,
        image_dir(c, v1, tmp_path / "v1"),
        lambda i: {"role": "worker"},
        procs,
    )
    # First a good upgrade, so the last good slot is B (not the older slot A).
    r = c.post(
        "/api/v1/upgrades",
        json={"image": "os-2", "selector": "role=worker", "preserve": True, "batch_size": 4},
    )
    assert finish(srv, r.json()["id"])["status"] == "succeeded"
    # Health is "config applied": the bad image's services never apply this one.
    patch = {"name": "base", "scope": "fleet", "patch": {"sysctls": {"vm.swappiness": "10"}}}
    assert c.post("/api/v1/config-patches", json=patch).status_code == 201
    wait_for(
        lambda: all(fleet.agent(n)["config"]["in_sync"] for n in fleet.names), 30, "config applied"
    )
    r = c.post(
        "/api/v1/upgrades",
        json={
            "image": "os-bad",
            "selector": "role=worker",
            "preserve": True,
            "batch_size": 2,
            "canary": 1,
            "failure_budget": 0,
            "health_timeout_seconds": 10,
        },
    )
    assert r.status_code == 201, r.text
    done = finish(srv, r.json()["id"])
    assert done["status"] == "failed", done
    machines = [m for b in done["batches"] for m in b["machines"]]
    canary = done["batches"][0]["machines"][0]
    assert canary["state"] == "failed" and "last good" in canary["error"], canary
    assert sorted(m["state"] for m in machines) == ["failed", "skipped", "skipped", "skipped"]
    # The canary is back on its last good image, in slot B; nobody else was touched.
    wait_for(
        lambda: fleet.agent(canary["name"])["os"]["image_digest"] == v2["digest"],
        30,
        "back on os-2",
    )
    assert fleet.agent(canary["name"])["os"]["slot"] == "B"
    assert [b["image"] for b in fleet.boots(canary["name"])].count(bad["digest"]) == 1
    for n in fleet.names:
        if n != canary["name"]:
            assert bad["digest"] not in {b["image"] for b in fleet.boots(n)}
    m = c.get(f"/api/v1/machines/{canary['name']}").json()
    assert m["phase"] == "failed" and "os-bad" in m["fault_reason"]
