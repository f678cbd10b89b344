"""Power API behaviour against a real server: what a machine shows after a failed operation on an
unreachable BMC, the BMC port policy, the operations list, and the BMC view's scheme."""

from __future__ import annotations

import itertools
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import bmc_peers as peers
from tests.peers.apiserver import RunningServer, run_server
from tests.support.bmc import FAST_SERVER as FAST
from tests.support.bmc import add_machine, wait_op

SENTENCE = re.compile(r"BMC 127\.0\.0\.1:(\d+) did not answer \((\d+) tries in [0-9.]+ s\)")


@pytest.fixture
def silent_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that takes every packet and never answers (a dead BMC)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_failed_operation_on_an_unreachable_bmc_shows_unknown_with_the_request(
    tmp_path: Path, sqlite_url: str, silent_udp_port: int
) -> None:
    peer = peers.start_ipmi_sim(tmp_path / "sim")
    try:
        with run_server(tmp_path / "data", sqlite_url, **FAST) as srv:
            c = srv.client()
            add_machine(c, "u1", "02:00:00:00:17:01", peer)
            on = wait_op(c, c.post("/api/v1/machines/u1/power", json={"action": "on"}).json())
            assert on["status"] == "succeeded", on
            seen = c.get("/api/v1/machines/u1").json()["power"]
            assert seen["observed"] == "on" and seen["error"] is None

            # The BMC goes silent (its address now points at a port that swallows packets).
            moved = c.patch(
                "/api/v1/machines/u1",
                json={
                    "bmc": {
                        "driver": "ipmi",
                        "address": f"127.0.0.1:{silent_udp_port}",
                        "username": peer.username,
                    }
                },
            )
            assert moved.status_code == 200, moved.text
            op = wait_op(c, c.post("/api/v1/machines/u1/power", json={"action": "off"}).json(), 120)
            assert op["status"] == "failed", op
            error = op["items"][0]["error"]
            match = SENTENCE.fullmatch(error)
            assert match and int(match[1]) == silent_udp_port and int(match[2]) > 1, error
            assert op["items"][0]["result"]["error_type"] == "BmcTimeoutError", op
            assert "error_type" not in on["items"][0]["result"], on

            power = c.get("/api/v1/machines/u1").json()["power"]
            assert power["observed"] == "unknown" and power["error"] == error
            assert power["observed_at"] > seen["observed_at"]
            assert power["last_request"] == {
                "kind": "power",
                "action": "off",
                "at": op["created_at"],
                "operation_id": op["id"],
                "result": "failed",
                "error": error,
            }
            failed = c.get("/api/v1/events", params={"machine": "u1", "kind": "power.failed"})
            assert failed.json()["items"][0]["message"] == f"power off failed: {error}"
    finally:
        peer.stop()


@pytest.fixture
def lab(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    """Loopback allowed for emulators, default BMC ports."""
    networks = ["127.0.0.0/8", "10.0.0.0/8"]
    with run_server(tmp_path / "data", sqlite_url, bmc_networks=networks) as srv:
        yield srv


_macs = itertools.count(1)


def _create(srv: RunningServer, name: str, bmc: dict[str, object]) -> tuple[int, dict]:
    mac = f"02:00:00:00:18:{next(_macs):02x}"
    r = srv.client().post(
        "/api/v1/machines", json={"name": name, "nics": [{"mac": mac}], "bmc": bmc}
    )
    return r.status_code, r.json()


def test_bmc_ports_outside_the_policy_and_bronzes_own_are_refused(lab: RunningServer) -> None:
    api_port = lab.settings.api_port
    refused = [
        ({"address": "127.0.0.1:22"}, "port 22 is not a BMC port"),
        ({"address": "127.0.0.1", "port": 22}, "port 22 is not a BMC port"),
        ({"address": "10.0.0.5:3306"}, "port 3306 is not a BMC port"),
        ({"address": f"127.0.0.1:{api_port}"}, f"port {api_port} is bronze's own API port"),
        ({"driver": "redfish", "address": "127.0.0.1", "port": api_port}, "bronze's own API"),
        ({"address": "127.0.0.1:7443"}, "port 7443 is bronze's own agent enrollment port"),
    ]
    for bmc, reason in refused:
        status, body = _create(lab, "x", bmc)
        assert status == 422, (bmc, body)
        assert body["error"]["code"] == "invalid" and reason in body["error"]["message"], body
        assert body["error"]["details"] == {"field": "bmc.address"}
    for i, bmc in enumerate(
        [
            {"driver": "ipmi", "address": "127.0.0.1:623"},
            {"driver": "redfish", "address": "127.0.0.1:8000", "scheme": "http"},
            {"driver": "redfish", "address": "127.0.0.1", "scheme": "http"},  # default port 80
            {"driver": "redfish", "address": "10.0.0.5:443"},
        ]
    ):
        status, body = _create(lab, f"ok{i}", bmc)
        assert status == 201, (bmc, body)
    r = lab.client().patch("/api/v1/machines/ok0", json={"bmc": {"address": "127.0.0.1:22"}})
    assert r.status_code == 422 and "port 22" in r.json()["error"]["message"]


def test_operations_list_is_paginated_and_ipmi_has_no_scheme(lab: RunningServer) -> None:
    c = lab.client()
    ids = []
    for i in range(3):
        status, m = _create(lab, f"op{i}", {"driver": "ipmi", "address": "127.0.0.1:623"})
        assert status == 201 and m["bmc"]["scheme"] is None, m
        r = c.post(f"/api/v1/machines/op{i}/power", json={"action": "on"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    status, m = _create(lab, "rf", {"driver": "redfish", "address": "10.0.0.5"})
    assert m["bmc"]["scheme"] == "https"

    first = c.get("/api/v1/operations", params={"limit": 2}).json()
    assert [o["id"] for o in first["items"]] == ids[:0:-1] and first["next_cursor"]
    rest = c.get("/api/v1/operations", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [o["id"] for o in rest["items"]] == ids[:1] and rest["next_cursor"] is None
    whole = c.get("/api/v1/operations").json()
    assert [o["id"] for o in whole["items"]] == ids[::-1] and whole["next_cursor"] is None
    bad = c.get("/api/v1/operations", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["error"]["details"] == {"field": "cursor"}
