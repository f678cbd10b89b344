"""Provisioning a rack end to end: a real server (SQLite and PostgreSQL), pyghmi IPMI BMCs that
power the simulated machines on, machines that netboot through the real boot plane
(``/boot.ipxe``), enroll over mTLS, get their config, install the image to their (sandbox) disk
and come back from it ``ready``; and the machines that stall, each failed at the right step
with the most likely cause, without holding up the rest."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import bmc_peers as peers
from tests.peers.apiserver import RunningServer, run_server
from tests.support.fleet import make_image, start_fleet, wait_for
from tests.support.ports import free_port

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
        bmc_networks=["127.0.0.0/8"],
        bmc_ports=["1-65535"],  # the simulated BMCs listen on free ports
        bmc_settle_timeout=10.0,
        bmc_poll_interval=0.2,
    ) as s:
        yield s


def finish(srv: RunningServer, rid: str, timeout: float = 240) -> dict[str, Any]:
    c = srv.client()
    return wait_for(
        lambda: (r := c.get(f"/api/v1/provisions/{rid}").json())["status"] in TERMINAL and r,
        timeout,
        f"provision {rid}",
    )


def machines_of(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for b in r["batches"] for m in b["machines"]}


def power_events(bmc: peers.Peer) -> list[str]:
    path: Path = bmc.extra["events"]  # type: ignore[assignment]
    return path.read_text().splitlines() if path.exists() else []


def test_a_rack_is_provisioned_and_each_stalled_machine_names_its_cause(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    image = make_image(c, "os-1", "1.0")
    r = c.post("/api/v1/profiles", json={"name": "installer", "image": "os-1", "agent": True})
    assert r.status_code == 201, r.text
    bmc = peers.start_pyghmi(tmp_path / "bmc", count=4, settle=0.2)
    sushy = peers.start_sushy(tmp_path / "sushy", delay=(0, 0))  # n06's BMC: Redfish
    dead = free_port(socket.SOCK_DGRAM)  # n04's BMC: nothing answers there
    try:
        ports = dict(zip(["n00", "n01", "n02", "n03"], bmc.extra["ports"], strict=True))  # type: ignore[call-overload]
        ports["n04"] = dead
        fleet = start_fleet(
            srv.client,
            bytes(srv.app.state.agent_api.ca.cert_pem),
            tmp_path / "fleet",
            7,  # n05 has no BMC: an operator powers it on (the simulator starts it at once)
            None,
            lambda i: {"rack": "r1", "size": "small" if i == 2 else "big"},
            procs,
            extra=["--power-events", str(bmc.extra["events"])],
            netboot=srv.url,
            diskless=False,
            phase="registered",
            powered_off=True,
            bmc_ports=ports,
            bad_tokens=("n03",),
            redfish_ports={"n06": sushy.port},
        )
        patch = {"name": "base", "scope": "fleet", "patch": {"sysctls": {"vm.swappiness": "10"}}}
        assert c.post("/api/v1/config-patches", json=patch).status_code == 201
        body = {
            "selector": "rack=r1,size=big",
            "image": "os-1",
            "install": {"disk": "/dev/vda"},
            "expect": ["nics >= 1", "memory_gib > 0"],
            "max_parallel": 10,
            "stagger_ms": 100,
            "retries": 0,
            "timeouts": {"netboot_seconds": 20},
        }
        plan = c.post("/api/v1/provisions?dry_run=true", json=body)
        assert plan.status_code == 200, plan.text
        steps = {m["name"]: m["steps"] for m in plan.json()["machines"]}
        assert steps["n05"][0] == "operator powers on (no BMC)"
        assert "install to /dev/vda" in steps["n00"]
        assert c.get("/api/v1/provisions").json()["items"] == []  # the dry run wrote nothing

        big = c.post("/api/v1/provisions", json=body)
        assert big.status_code == 201, big.text
        small = c.post(
            "/api/v1/provisions",
            json={**body, "selector": "size=small", "expect": ["memory_gib >= 100000"]},
        )
        assert small.status_code == 201, small.text
        overlap = c.post("/api/v1/provisions", json={**body, "selector": "rack=r1"})
        assert overlap.status_code == 409, overlap.text

        done = finish(srv, big.json()["id"])
        ms = machines_of(done)
        assert done["status"] == "completed_with_failures", done
        for n in ("n00", "n01", "n05", "n06"):
            assert ms[n]["state"] == "succeeded", (n, ms[n]["error"])
            m = c.get(f"/api/v1/machines/{n}").json()
            assert (m["phase"], m["image"]) == ("ready", "os-1"), m
            os_ = fleet.agent(n)["os"]
            assert os_ == {
                "image_digest": image["digest"],
                "slot": "A",
                "last_good_digest": image["digest"],
            }, (n, os_)
            assert fleet.agent(n)["config"]["in_sync"], n
        # One story per machine, in order, from power-on to ready.
        events = c.get("/api/v1/machines/n00/events", params={"limit": 200}).json()["items"]
        story = [
            e["kind"].rsplit(".", 1)[1]
            if e["kind"] != "rollout.machine.step"
            else e["data"]["step"]
            for e in reversed(events)
            if e["kind"].startswith("rollout.machine.") and "power" not in e["data"]
        ]
        assert story == [
            "started",
            "netbooting",
            "configuring",
            "installing",
            "booting-disk",
            "succeeded",
        ], story
        timeline = c.get("/api/v1/machines/n00/timeline").json()["items"]
        assert [e["detail"].get("image") for e in timeline if e["kind"] == "SCRIPT"][:1] == [
            "os-1"
        ]  # it netbooted the installer profile through the boot plane
        # ... and the timeline with events reads as one story from power-on to ready
        story_kinds = [
            e["kind"]
            for e in c.get("/api/v1/machines/n00/timeline", params={"events": "true"}).json()[
                "items"
            ]
        ]
        assert (
            story_kinds.index("rollout.machine.started")
            < story_kinds.index("SCRIPT")
            < story_kinds.index("rollout.machine.succeeded")
        ), story_kinds
        # Stalled machines: failed at their step with the cause.
        assert ms["n03"]["state"] == "failed"
        assert ms["n03"]["error"].startswith("agent never enrolled"), ms["n03"]
        assert ms["n04"]["state"] == "failed"
        assert ms["n04"]["error"].startswith("power action failed"), ms["n04"]
        n04 = c.get("/api/v1/machines/n04").json()
        assert n04["phase"] == "failed" and "netbooting" in n04["fault_reason"], n04
        small_done = finish(srv, small.json()["id"])
        n02 = machines_of(small_done)["n02"]
        assert n02["state"] == "failed" and n02["step"] == "checking", n02
        assert "inventory check failed: memory_gib is" in n02["error"], n02
        # Each machine with a working BMC got PXE once and one power-on, nothing more.
        log = power_events(bmc)
        for name in ("n00", "n01", "n02", "n03"):
            mine = [e.split(" ", 1)[1] for e in log if e.startswith(f"{ports[name]} ")]
            assert [e for e in mine if e in ("on", "cycle", "reset")] == ["on"], (name, mine)
            assert any(e.startswith("boot ") for e in mine), (name, mine)

        # Deprovisioning: wipe through the agent, back to registered, certificate refused.
        wipes = {
            "n00": c.post("/api/v1/machines/n00/deprovision", json={"wipe": "quick"}),
            "n05": c.post("/api/v1/machines/n05/deprovision", json={"wipe": "full"}),
            "n04": c.post(
                "/api/v1/machines/n04/deprovision",
                json={"wipe": "quick", "wipe_timeout_seconds": 10},
            ),
        }
        for name, r in wipes.items():
            assert r.status_code == 201, (name, r.text)
        again = c.post("/api/v1/machines/n00/deprovision", json={"wipe": "none"})
        assert again.status_code == 409, again.text  # held by the running one
        ended = {
            name: wait_for(
                lambda r=r: (
                    (g := c.get(f"/api/v1/deprovisions/{r.json()['id']}").json())["status"]
                    in TERMINAL
                    and g
                ),
                60,
                f"deprovision of {name}",
            )
            for name, r in wipes.items()
        }
        for name in ("n00", "n05"):
            assert ended[name]["status"] == "succeeded", ended[name]
            m = c.get(f"/api/v1/machines/{name}").json()
            assert (m["phase"], m["image"]) == ("registered", None), m
            assert not (fleet.root(name) / "system").exists()  # its disk is blank
            kinds = [e["kind"] for e in c.get(f"/api/v1/machines/{name}/events").json()["items"]]
            assert "agent.certificate.revoked" in kinds
            # Its certificate no longer opens a session: the agent stays disconnected.
            wait_for(lambda n=name: not fleet.agent(n)["connected"], 30, f"{name} disconnected")
        n04_wipe = machines_of(ended["n04"])["n04"]
        assert n04_wipe["state"] == "failed", n04_wipe
        assert n04_wipe["error"] == "the agent is not connected: the disk was not wiped"
        assert c.get("/api/v1/machines/n04").json()["phase"] == "failed"
    finally:
        bmc.stop()
        sushy.stop()
