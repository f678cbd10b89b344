"""Power through the REST API against real BMC peers (sushy-emulator, ipmi_sim, pyghmi), checked
with independent reference clients (raw Redfish GET, ipmitool)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.peers import bmc_peers as peers
from tests.peers.apiserver import RunningServer, run_server
from tests.support.bmc import FAST_SERVER as FAST
from tests.support.bmc import add_machine, start_peer, wait_op


@pytest.mark.parametrize("peer_name", ["sushy", "sushy-tls", "ipmi_sim", "pyghmi"])
def test_power_and_boot_device_through_api(
    lab: RunningServer, tmp_path: Path, peer_name: str
) -> None:
    peer = start_peer(peer_name, tmp_path / peer_name)
    try:
        c = lab.client()
        add_machine(c, "n1", "02:00:00:00:10:01", peer)
        r = c.post("/api/v1/machines/n1/power", json={"action": "on"})
        assert r.status_code == 202, r.text
        again = c.post("/api/v1/machines/n1/power", json={"action": "off"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        op = wait_op(c, r.json())
        assert op["status"] == "succeeded", op
        assert op["items"][0]["result"]["state"] == "on"
        assert peers.reference_power(peer) == "on"

        op = wait_op(c, c.post("/api/v1/machines/n1/power", json={"action": "off"}).json())
        assert op["status"] == "succeeded", op
        assert peers.reference_power(peer) == "off"
        m = c.get("/api/v1/machines/n1").json()
        assert m["power"] == {
            "last_request": {
                "kind": "power",
                "action": "off",
                "at": op["created_at"],
                "operation_id": op["id"],
                "result": "succeeded",
                "error": None,
            },
            "observed": "off",
            "observed_at": m["power"]["observed_at"],
            "error": None,
        }
        assert m["bmc"]["scheme"] == (None if peer.kind != "redfish" else peer.scheme)

        op = wait_op(
            c,
            c.put(
                "/api/v1/machines/n1/boot-device",
                json={"device": "pxe", "persistent": False, "uefi": True},
            ).json(),
        )
        assert op["status"] == "succeeded", op
        assert "pxe" in str(peers.reference_boot(peer)["device"]).lower()

        live = c.get("/api/v1/machines/n1/power").json()
        assert live == {"machine": "n1", "state": "off", "error": None}
        kinds = [e["kind"] for e in c.get("/api/v1/machines/n1/events").json()["items"]]
        assert kinds.count("power.succeeded") == 2 and "boot-device.succeeded" in kinds
    finally:
        peer.stop()


def test_bulk_power_staggered_with_per_machine_results(lab: RunningServer, tmp_path: Path) -> None:
    bmcs = [peers.start_ipmi_sim(tmp_path / f"sim{i}") for i in range(3)]
    try:
        c = lab.client()
        for i, p in enumerate(bmcs):
            add_machine(c, f"b{i}", f"02:00:00:00:11:{i:02x}", p)
        r = c.post(
            "/api/v1/power",
            json={"selector": "lab=power", "action": "cycle", "max_parallel": 2, "stagger_ms": 300},
        )
        assert r.status_code == 202, r.text
        op = wait_op(c, r.json())
        assert op["status"] == "succeeded", op
        assert sorted(i["machine"] for i in op["items"]) == ["b0", "b1", "b2"]
        assert all(i["status"] == "succeeded" and i["result"]["state"] == "on" for i in op["items"])
        assert all(peers.reference_power(p) == "on" for p in bmcs)
        starts = sorted(i["started_at"] for i in op["items"])
        from datetime import datetime

        t = [datetime.fromisoformat(s) for s in starts]
        assert (t[1] - t[0]).total_seconds() >= 0.25 and (t[2] - t[1]).total_seconds() >= 0.25
        r = c.post("/api/v1/power", json={"selector": "lab=nothing", "action": "on"})
        assert r.status_code == 422
        r = c.post("/api/v1/power", json={"selector": "lab in (", "action": "on"})
        assert r.status_code == 422
        r = c.post("/api/v1/power", json={"selector": "lab=power", "action": "explode"})
        assert r.status_code == 422
    finally:
        for p in bmcs:
            p.stop()


def test_wrong_credentials_fail_without_retry(lab: RunningServer, tmp_path: Path) -> None:
    peer = peers.start_ipmi_sim(tmp_path / "sim")
    try:
        c = lab.client()
        add_machine(c, "w1", "02:00:00:00:12:01", peer, password="not-the-password")
        op = wait_op(c, c.post("/api/v1/machines/w1/power", json={"action": "on"}).json())
        assert op["status"] == "failed"
        item = op["items"][0]
        assert item["status"] == "failed" and "auth" in item["error"].lower()
        assert peers.reference_power(peer) == "off"
    finally:
        peer.stop()


@pytest.mark.parametrize(
    "address,reason",
    [
        ("169.254.169.254", "loopback, link-local"),
        ("http://10.0.0.1", "scheme"),
        ("admin:pw@10.0.0.1", "userinfo"),
        ("8.8.8.8", "outside the management networks"),
    ],
)
def test_bmc_addresses_outside_policy_are_refused(
    tmp_path: Path, sqlite_url: str, address: str, reason: str
) -> None:
    with run_server(tmp_path / "data", sqlite_url) as srv:  # default networks: private ranges only
        c = srv.client()
        r = c.post(
            "/api/v1/machines",
            json={"name": "x", "nics": [{"mac": "02:00:00:00:13:01"}], "bmc": {"address": address}},
        )
        assert r.status_code == 422 and reason in r.json()["error"]["message"], r.text
        r = c.post(
            "/api/v1/machines",
            json={
                "name": "x",
                "nics": [{"mac": "02:00:00:00:13:01"}],
                "bmc": {"address": "127.0.0.1:623"},
            },
        )
        assert r.status_code == 422  # loopback is refused unless listed


def test_power_sync_out_of_band_then_maintenance(tmp_path: Path, sqlite_url: str) -> None:
    peer = peers.start_ipmi_sim(tmp_path / "sim")
    try:
        with run_server(
            tmp_path / "data", sqlite_url, power_sync_enabled=True, power_sync_interval=0.5, **FAST
        ) as srv:
            c = srv.client()
            add_machine(c, "s1", "02:00:00:00:14:01", peer)

            def events(kind: str) -> list[dict[str, Any]]:
                return c.get("/api/v1/events", params={"machine": "s1", "kind": kind}).json()[
                    "items"
                ]

            deadline = time.monotonic() + 30
            while c.get("/api/v1/machines/s1").json()["power"]["observed"] != "off":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            peers.ipmitool(peer, "chassis", "power", "on")  # behind bronze's back
            while not events("power.changed"):
                assert time.monotonic() < deadline, "out-of-band change not recorded"
                time.sleep(0.2)
            assert events("power.changed")[0]["data"] == {"from": "off", "to": "on"}

            peer.stop()  # the BMC goes away
            deadline = time.monotonic() + 90
            while (m := c.get("/api/v1/machines/s1").json())["phase"] != "maintenance":
                assert time.monotonic() < deadline, m
                time.sleep(0.3)
            assert (
                m["power"]["observed"] == "unknown"
                and "3 power-state reads failed" in m["fault_reason"]
            )
            assert len(events("power.sync_failed")) == 3
            n = len(events("power.sync_failed"))
            time.sleep(2)  # in maintenance the BMC is no longer polled
            assert len(events("power.sync_failed")) == n
    finally:
        peer.stop()


def test_canary_password_never_leaks(
    lab: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    canary = "Canary-Pw-93f1c2"  # 16 bytes: the IPMI password limit of ipmi_sim
    caplog.set_level(logging.DEBUG)
    good = peers.start_ipmi_sim(tmp_path / "good", password=canary)
    bad = peers.start_ipmi_sim(tmp_path / "bad", password="other-pass")
    try:
        c = lab.client()
        responses = [
            add_machine(c, "c1", "02:00:00:00:15:01", good, password=canary),
            add_machine(c, "c2", "02:00:00:00:15:02", bad, password=canary),
        ]
        ops = [
            wait_op(c, c.post(f"/api/v1/machines/{n}/power", json={"action": "on"}).json())
            for n in ("c1", "c2")
        ]
        assert ops[0]["status"] == "succeeded" and ops[1]["status"] == "failed"
        texts = [
            str(responses),
            str(ops),
            c.get("/api/v1/events").text,
            c.get("/api/v1/machines").text,
            c.get("/api/v1/operations").text,
            str(c.get("/api/v1/machines/c2/power").json()),
        ]
        assert not any(canary in t for t in texts)
        assert canary not in caplog.text
        for rec in caplog.records:
            assert canary not in str(rec.args) and canary not in (rec.exc_text or "")
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        assert canary.encode() not in fh.read(), pid
                except OSError:
                    pass
        engine = create_engine(lab.settings.effective_database_url)
        with engine.connect() as conn:
            for table in ("machines", "events", "operations", "operation_items"):
                assert canary not in str(conn.execute(text(f"SELECT * FROM {table}")).all())  # noqa: S608
        engine.dispose()
    finally:
        good.stop()
        bad.stop()


def test_power_cli(lab: RunningServer, tmp_path: Path) -> None:
    from tests.support.cli import run

    peer = peers.start_ipmi_sim(tmp_path / "sim")
    try:
        c = lab.client()
        add_machine(c, "p1", "02:00:00:00:16:01", peer)
        r = run(lab, tmp_path, "power", "on", "p1")
        assert r.returncode == 0, r.stderr
        assert "p1" in r.stdout and "succeeded" in r.stdout and peers.reference_power(peer) == "on"
        r = run(lab, tmp_path, "power", "status", "--selector", "lab=power", "-o", "json")
        assert r.returncode == 0 and '"state": "on"' in r.stdout
        r = run(
            lab, tmp_path, "boot-device", "set", "p1", "--device", "pxe", "--once", "-o", "json"
        )
        assert r.returncode == 0, r.stderr
        r = run(lab, tmp_path, "power", "off", "--selector", "lab=power", "--stagger-ms", "10")
        assert r.returncode == 0 and peers.reference_power(peer) == "off"
        r = run(lab, tmp_path, "power", "on", "p1", "--selector", "x=y")
        assert r.returncode == 1 and r.stderr.startswith("error: give machine names")
        peer.stop()
        r = run(lab, tmp_path, "power", "status", "p1")
        assert r.returncode == 1 and "unknown" in r.stdout
    finally:
        peer.stop()
