"""Diskless machines upgraded by switching the image their boot script serves: a real server
(SQLite and PostgreSQL), real gRPC sessions, and simulated machines whose firmware fetches
``/boot.ipxe`` at every boot and runs what it names (``agent.netboot``). The last good image is
kept on the server (``machines.image``; ``trial_image`` while one is tried)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.fleet import Fleet, make_image, start_fleet, wait_for

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


def finish(c: httpx.Client, rollout_id: str, timeout: float = 180) -> dict[str, Any]:
    return wait_for(
        lambda: (r := c.get(f"/api/v1/upgrades/{rollout_id}").json())["status"] in TERMINAL and r,
        timeout,
        f"rollout {rollout_id} to end",
    )


def served_images(c: httpx.Client, name: str) -> list[str]:
    """The images the boot plane's scripts named for the machine, oldest first (its timeline)."""
    items = c.get(f"/api/v1/machines/{name}/timeline", params={"limit": 1000}).json()["items"]
    return [e["detail"]["image"] for e in items if e["kind"] == "SCRIPT" and "image" in e["detail"]]


def diskless_fleet(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]], count: int
) -> tuple[Fleet, dict[str, dict[str, Any]]]:
    c = srv.client()
    images = {
        "os-1": make_image(c, "os-1", "1.0"),
        "os-2": make_image(c, "os-2", "2.0"),
        "os-bad": make_image(c, "os-bad", "3.0", ["bronze.sim=unhealthy"]),
    }
    r = c.post("/api/v1/profiles", json={"name": "diskless", "image": "os-1", "agent": True})
    assert r.status_code == 201, r.text
    fleet = start_fleet(
        srv.client,
        srv.app.state.agent_api.ca.cert_pem,
        tmp_path / "fleet",
        count,
        None,
        lambda i: {"role": "worker"},
        procs,
        netboot=srv.url,
    )
    return fleet, images


def test_diskless_fleet_upgrades_by_switching_the_served_image(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    fleet, images = diskless_fleet(srv, tmp_path, procs, 6)
    v1, v2 = images["os-1"]["digest"], images["os-2"]["digest"]
    # Booted through the boot plane: the profile's image, reported by each agent.
    for n in fleet.names:
        assert fleet.agent(n)["os"]["image_digest"] == v1, fleet.agent(n)
        assert served_images(c, n) == ["os-1"]

    r = c.post(
        "/api/v1/upgrades",
        json={"image": "os-2", "selector": "role=worker", "preserve": True, "batch_size": 3},
    )
    assert r.status_code == 201, r.text
    done = finish(c, r.json()["id"])
    assert done["status"] == "succeeded", done
    for n in fleet.names:
        m = c.get(f"/api/v1/machines/{n}").json()
        assert (m["phase"], m["image"], m["trial_image"], m["boot_from"]) == (
            "ready",
            "os-2",
            None,
            "network",
        ), m
        assert fleet.agent(n)["os"]["image_digest"] == v2
        # Exactly one boot into the new image, and the boot plane served it from then on.
        assert [b["image"] for b in fleet.boots(n)] == [v1, v2], fleet.boots(n)
        assert served_images(c, n) == ["os-1", "os-2"]
    # The confirmed image is in use: it cannot be deleted.
    assert c.delete("/api/v1/images/os-2").status_code == 409


def test_unhealthy_image_on_a_diskless_machine_returns_to_its_last_good(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    fleet, images = diskless_fleet(srv, tmp_path, procs, 3)
    v1, bad = images["os-1"]["digest"], images["os-bad"]["digest"]
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
            "canary": 1,
            "failure_budget": 0,
            "health_timeout_seconds": 10,
        },
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    canary = r.json()["batches"][0]["machines"][0]["name"]
    # While it is tried, the boot plane serves the trial image to the canary only.
    wait_for(
        lambda: (
            c.get(f"/api/v1/machines/{canary}").json()["trial_image"] == "os-bad"
            or c.get(f"/api/v1/upgrades/{rid}").json()["status"] in TERMINAL
        ),
        30,
        "the trial image served",
    )
    done = finish(c, rid)
    assert done["status"] == "failed", done
    states = {m["name"]: m for b in done["batches"] for m in b["machines"]}
    assert states[canary]["state"] == "failed"
    assert "last good" in states[canary]["error"], states[canary]
    assert sorted(m["state"] for m in states.values()) == ["failed", "skipped", "skipped"]
    # Back on its last good image: served again by the server and reported by the agent.
    wait_for(lambda: fleet.agent(canary)["os"]["image_digest"] == v1, 30, "back on os-1")
    assert [b["image"] for b in fleet.boots(canary)] == [v1, bad, v1], fleet.boots(canary)
    assert served_images(c, canary) == ["os-1", "os-bad", "os-1"]
    m = c.get(f"/api/v1/machines/{canary}").json()
    assert m["trial_image"] is None and m["phase"] == "failed" and "os-bad" in m["fault_reason"]
    for n in fleet.names:
        if n != canary:
            assert bad not in {b["image"] for b in fleet.boots(n)}
            assert served_images(c, n) == ["os-1"]
