"""Enrollment tokens die with the boot they were issued for: power-off / cycle / reset operations,
power sync seeing the machine off, and reprovisioning (phase provisioning or discovered). Real
uvicorn + agent API, a real pyghmi IPMI BMC, and a real gRPC ``Enroll`` call with a real CSR."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import new_key_and_csr
from tests.peers import bmc_peers as peers
from tests.peers.apiserver import RunningServer, run_server
from tests.support.bmc import FAST_SERVER as FAST
from tests.support.bmc import add_machine, wait_op
from tests.support.wait import eventually


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[peers.Peer]:
    peer = peers.start_pyghmi(tmp_path / "bmc")
    try:
        yield peer
    finally:
        peer.stop()


def _server(tmp_path: Path, db_url: str, **kw: Any) -> Any:
    return run_server(
        tmp_path / "data",
        db_url,
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        **FAST,
        **kw,
    )


def enroll(srv: RunningServer, machine_id: str, token: str) -> grpc.StatusCode:
    """Redeem ``token`` over the real enrollment port; OK or the refusal's code."""
    api = srv.app.state.agent_api
    _, csr = new_key_and_csr(machine_id)
    creds = grpc.ssl_channel_credentials(root_certificates=api.ca.cert_pem)
    with grpc.secure_channel(f"127.0.0.1:{api.enroll_port}", creds) as ch:
        try:
            pb_grpc.EnrollmentStub(ch).Enroll(
                pb.EnrollRequest(
                    bootstrap_token=token, machine_id=machine_id, csr_pem=csr.decode()
                ),
                timeout=10,
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def token(c: httpx.Client, name: str) -> str:
    r = c.post(f"/api/v1/machines/{name}/enrollment-token", json={"boot_ref": "b"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def wiped(c: httpx.Client, name: str) -> list[str]:
    items = c.get("/api/v1/events", params={"machine": name, "kind": "agent.token.wiped"}).json()
    return [e["data"]["reason"] for e in items["items"]]


def test_power_operations_and_reprovision_wipe_the_token(
    tmp_path: Path, db_url: str, bmc: peers.Peer
) -> None:
    with _server(tmp_path, db_url) as srv:
        c = srv.client()
        mid = add_machine(c, "w1", "02:00:00:00:20:01", bmc)["id"]
        assert (
            wait_op(c, c.post("/api/v1/machines/w1/power", json={"action": "on"}).json())["status"]
            == "succeeded"
        )

        # Powering on, or changing labels, leaves the token alone: it still enrolls (once).
        t = token(c, "w1")
        assert (
            wait_op(c, c.post("/api/v1/machines/w1/power", json={"action": "on"}).json())["status"]
            == "succeeded"
        )
        assert c.patch("/api/v1/machines/w1", json={"labels": {"x": "y"}}).status_code == 200
        assert enroll(srv, mid, t) == grpc.StatusCode.OK
        assert enroll(srv, mid, t) == grpc.StatusCode.UNAUTHENTICATED  # used

        for action in ("off", "cycle", "reset"):
            if action != "off":
                wait_op(c, c.post("/api/v1/machines/w1/power", json={"action": "on"}).json())
            t = token(c, "w1")
            op = wait_op(c, c.post("/api/v1/machines/w1/power", json={"action": action}).json())
            assert op["status"] == "succeeded", op
            assert enroll(srv, mid, t) == grpc.StatusCode.UNAUTHENTICATED, action
        # A token issued after the operation started (the next boot's) is not touched.
        t = token(c, "w1")
        assert enroll(srv, mid, t) == grpc.StatusCode.OK

        for phase in ("provisioning", "discovered"):
            assert c.patch("/api/v1/machines/w1", json={"phase": "ready"}).status_code == 200
            t = token(c, "w1")
            r = c.patch("/api/v1/machines/w1", json={"phase": phase})
            assert r.status_code == 200, r.text
            assert enroll(srv, mid, t) == grpc.StatusCode.UNAUTHENTICATED, phase

        assert wiped(c, "w1") == [
            "reprovision (phase discovered)",
            "reprovision (phase provisioning)",
            "power reset",
            "power cycle",
            "power off",
        ]


def test_power_sync_seeing_the_machine_off_wipes_the_token(
    tmp_path: Path, sqlite_url: str, bmc: peers.Peer
) -> None:
    with _server(tmp_path, sqlite_url, power_sync_enabled=True, power_sync_interval=0.5) as srv:
        c = srv.client()
        mid = add_machine(c, "w2", "02:00:00:00:20:02", bmc)["id"]
        peers.ipmitool(bmc, "chassis", "power", "on")
        eventually(lambda: c.get("/api/v1/machines/w2").json()["power"]["observed"] == "on", 30)
        t = token(c, "w2")
        peers.ipmitool(bmc, "chassis", "power", "off")  # behind bronze's back
        eventually(lambda: wiped(c, "w2") == ["observed powered off"], 30)
        assert enroll(srv, mid, t) == grpc.StatusCode.UNAUTHENTICATED
