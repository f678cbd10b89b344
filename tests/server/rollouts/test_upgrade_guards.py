"""What stops or undoes an upgrade: the server's watchdog through a real IPMI BMC, webhooks
(HMAC-signed), a tampered asset and an unsigned image refused by the agent itself."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.image_manifest import public_key_text
from tests.peers import bmc_peers as peers
from tests.peers.apiserver import RunningServer, run_server
from tests.support.cli import run
from tests.support.fleet import image_dir, make_image, start_fleet, wait_for

TERMINAL = {"succeeded", "completed_with_failures", "failed", "aborted"}


@pytest.fixture
def srv(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data",
        sqlite_url,
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        agent_heartbeat_interval=1.0,
        rollout_interval=0.2,
        bmc_networks=["127.0.0.0/8"],
        bmc_ports=["1-65535"],  # the simulated BMCs listen on free ports
        bmc_settle_timeout=20.0,
        bmc_poll_interval=0.2,
    ) as s:
        yield s


def finish(srv: RunningServer, rid: str, timeout: float = 180) -> dict[str, Any]:
    c = srv.client()
    return wait_for(
        lambda: (r := c.get(f"/api/v1/upgrades/{rid}").json())["status"] in TERMINAL and r,
        timeout,
        f"rollout {rid}",
    )


def machines_of(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for b in r["batches"] for m in b["machines"]}


def ca(srv: RunningServer) -> bytes:
    return bytes(srv.app.state.agent_api.ca.cert_pem)


@pytest.mark.parametrize("no_cycle", [False, True], ids=["cycle", "bmc-without-cycle"])
def test_bmc_watchdog_recovers_a_kernel_that_never_comes_up(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]], no_cycle: bool
) -> None:
    """Also through a BMC without chassis power cycle (VirtualBMC): off, then on."""
    c = srv.client()
    v1 = make_image(c, "os-1", "1.0")
    dead = make_image(c, "os-dead", "9.0", ["bronze.sim=no-boot"])
    bmc = peers.start_pyghmi(tmp_path / "bmc", count=2, settle=0.2, no_cycle=no_cycle)
    try:
        ports = dict(zip(["n00", "n01"], bmc.extra["ports"], strict=True))  # type: ignore[call-overload]
        fleet = start_fleet(
            srv.client,
            ca(srv),
            tmp_path / "fleet",
            2,
            image_dir(c, v1, tmp_path / "v1"),
            lambda i: {"role": "worker"},
            procs,
            extra=["--power-events", str(bmc.extra["events"])],
            bmc_ports=ports,
        )
        if no_cycle:  # a BMC that reads "off" powers on for a cycle: it must read "on" first
            op = c.post("/api/v1/machines/n00/power", json={"action": "on"}).json()
            wait_for(
                lambda: c.get(f"/api/v1/operations/{op['id']}").json()["status"] == "succeeded",
                30,
                "n00 powered on",
            )
        r = c.post(
            "/api/v1/upgrades",
            json={
                "image": "os-dead",
                "selector": "role=worker",
                "preserve": True,
                "canary": 1,
                "health_timeout_seconds": 10,
            },
        )
        assert r.status_code == 201, r.text
        done = finish(srv, r.json()["id"])
        assert done["status"] == "failed", done
        canary = machines_of(done)["n00"]
        assert canary["state"] == "failed", canary
        assert "power-cycling through the BMC" in canary["error"] or "last good" in canary["error"]
        # The server cycled it through IPMI (the simulator logged it) and boot counting brought
        # it back on os-1; the second machine was never touched.
        events = (Path(str(bmc.extra["events"]))).read_text()
        if no_cycle:  # the cycle was refused: off, then on
            assert f"{ports['n00']} off\n{ports['n00']} on\n" in events, events
            assert f"{ports['n00']} cycle" not in events, events
        else:
            assert f"{ports['n00']} cycle" in events or f"{ports['n00']} on" in events, events
        wait_for(
            lambda: fleet.agent("n00")["os"]["image_digest"] == v1["digest"], 30, "n00 on os-1"
        )
        assert [b["image"] for b in fleet.boots("n00")].count(dead["digest"]) == 1
        assert machines_of(done)["n01"]["state"] == "skipped"
        ops = c.get("/api/v1/operations").json()["items"]
        assert any(o["action"] == "cycle" and o["requested_by"] == "rollouts" for o in ops), ops
        if no_cycle:
            mine = [o["action"] for o in ops if o["requested_by"] == "rollouts"]
            assert {"cycle", "off", "on"} <= set(mine), mine
    finally:
        bmc.stop()


class Hooks(http.server.BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []
    key = b"hook-key-0123456789"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["content-length"]))
        doc = json.loads(body)
        mac = hmac.new(self.key, body, hashlib.sha256).hexdigest()
        doc["_signed"] = self.headers.get("x-bronze-signature") == f"sha256={mac}"
        Hooks.calls.append(doc)
        fail = doc["event"] == "before-upgrade" and doc["machine"]["name"] == "n01"
        self.send_response(500 if fail else 200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_hooks_are_signed_and_a_failing_before_hook_spares_the_machine(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    v1 = make_image(c, "os-1", "1.0")
    v2 = make_image(c, "os-2", "2.0")
    fleet = start_fleet(
        srv.client,
        ca(srv),
        tmp_path / "fleet",
        2,
        image_dir(c, v1, tmp_path / "v1"),
        lambda i: {"role": "worker"},
        procs,
    )
    Hooks.calls = []
    hook_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=hook_srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook_srv.server_address[1]}/hook"
    try:
        r = c.post(
            "/api/v1/upgrades",
            json={
                "image": "os-2",
                "selector": "role=worker",
                "preserve": True,
                "batch_size": 2,
                "failure_budget": 1,
                "hooks": {
                    "before": {"url": url, "secret": Hooks.key.decode()},
                    "after": {"url": url, "secret": Hooks.key.decode()},
                },
            },
        )
        assert r.status_code == 201, r.text
        assert Hooks.key.decode() not in r.text  # the secret is never shown
        assert r.json()["spec"]["hooks"]["before"]["signed"] is True
        done = finish(srv, r.json()["id"])
    finally:
        hook_srv.shutdown()
    assert done["status"] == "completed_with_failures", done
    ms = machines_of(done)
    assert ms["n00"]["state"] == "succeeded"
    assert ms["n01"]["state"] == "failed" and "pre-upgrade hook failed" in ms["n01"]["error"]
    assert "HTTP 500" in ms["n01"]["error"]
    assert all(call["_signed"] for call in Hooks.calls)
    seen = [(call["event"], call["machine"]["name"]) for call in Hooks.calls]
    assert seen.index(("before-upgrade", "n00")) < seen.index(("after-upgrade", "n00"))
    assert ("after-upgrade", "n01") not in seen
    assert v2["digest"] not in {b["image"] for b in fleet.boots("n01")}  # never touched


def test_agent_refuses_a_tampered_file_and_keeps_its_active_slot(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    v1 = make_image(c, "os-1", "1.0")
    make_image(c, "os-2", "2.0")
    fleet = start_fleet(
        srv.client,
        ca(srv),
        tmp_path / "fleet",
        1,
        image_dir(c, v1, tmp_path / "v1"),
        lambda i: {"role": "worker"},
        procs,
    )
    evil = b"not the kernel the image was made of"
    r = c.put(
        "/api/v1/assets/vmlinuz-os-2",
        params={"sha256": hashlib.sha256(evil).hexdigest()},
        content=evil,
    )
    assert r.status_code in (200, 201), r.text
    before = sorted((fleet.root("n00") / "system" / "BOOT-A").iterdir())
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}
    r = c.post(
        "/api/v1/upgrades", json={"image": "os-2", "selector": "role=worker", "preserve": True}
    )
    done = finish(srv, r.json()["id"])
    m = machines_of(done)["n00"]
    assert done["status"] == "failed" and m["state"] == "failed", done
    assert "refused" in m["error"] and "sha256" in m["error"], m
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (fleet.root("n00") / "system" / "BOOT-A").iterdir()
    }
    assert after == sums  # the active slot was never written
    assert fleet.agent("n00")["os"] == {
        "image_digest": v1["digest"],
        "slot": "A",
        "last_good_digest": v1["digest"],
    }


def test_agent_with_trusted_keys_refuses_an_unsigned_image(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    v1 = make_image(c, "os-1", "1.0")
    make_image(c, "os-2", "2.0")  # the server has no keys: it takes the unsigned image
    keys = tmp_path / "image-keys"
    keys.write_text(public_key_text(Ed25519PrivateKey.generate()) + "\n")
    start_fleet(
        srv.client,
        ca(srv),
        tmp_path / "fleet",
        1,
        image_dir(c, v1, tmp_path / "v1"),
        lambda i: {"role": "worker"},
        procs,
        extra=["--trusted-keys", str(keys)],
    )
    r = c.post(
        "/api/v1/upgrades", json={"image": "os-2", "selector": "role=worker", "preserve": True}
    )
    m = machines_of(finish(srv, r.json()["id"]))["n00"]
    assert m["state"] == "failed" and "unsigned" in m["error"], m


def test_cli_plan_start_watch_and_images(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """``bronze images`` (keygen, sign) and ``bronze upgrade`` plan / start --watch / status."""
    c = srv.client()
    v1 = make_image(c, "os-1", "1.0")
    make_image(c, "os-2", "2.0")
    start_fleet(
        srv.client,
        ca(srv),
        tmp_path / "fleet",
        3,
        image_dir(c, v1, tmp_path / "v1"),
        lambda i: {"role": "worker", "rack": f"r{i % 2}"},
        procs,
    )
    key = tmp_path / "signing.key"
    r = run(srv, tmp_path, "images", "keygen", "--output-file", str(key))
    assert r.returncode == 0 and r.stdout.startswith("ed25519:"), r.stderr
    assert (key.stat().st_mode & 0o777) == 0o600
    r = run(srv, tmp_path, "images", "sign", "os-2", "--key-file", str(key))
    # This server trusts no key, so it cannot check the signature: refused, with the reason.
    assert r.returncode == 1 and "no trusted keys" in r.stderr, r
    r = run(srv, tmp_path, "images", "list")
    assert r.returncode == 0 and "os-1" in r.stdout and "os-2" in r.stdout
    plan = run(
        srv,
        tmp_path,
        "upgrade",
        "plan",
        "--image",
        "os-2",
        "-l",
        "role=worker",
        "--preserve",
        "--batch-size",
        "2",
        "--failure-domain",
        "rack",
    )
    assert plan.returncode == 0, plan.stderr
    assert "preserve=True, 2 batches" in plan.stdout and "n00" in plan.stdout
    assert c.get("/api/v1/upgrades").json()["items"] == []
    missing = run(srv, tmp_path, "upgrade", "start", "--image", "os-2", "-l", "role=worker")
    assert missing.returncode != 0 and "--preserve" in missing.stderr  # no silent default
    watch = run(
        srv,
        tmp_path,
        "upgrade",
        "start",
        "--image",
        "os-2",
        "-l",
        "role=worker",
        "--preserve",
        "--batch-size",
        "2",
        "--watch",
    )
    assert watch.returncode == 0, watch.stderr
    assert "n02: succeeded" in watch.stderr and ": succeeded" in watch.stderr.splitlines()[-1]
    status = run(srv, tmp_path, "upgrade", "status", "-o", "json")
    assert status.returncode == 0 and json.loads(status.stdout)[0]["status"] == "succeeded"
