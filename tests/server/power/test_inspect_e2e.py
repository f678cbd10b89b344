"""Out-of-band inspection through the REST API against real BMC peers: sushy-emulator (Redfish:
UUID, serial, EthernetInterfaces MACs) and the pyghmi IPMI simulator (Get System GUID)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers import bmc_peers as peers
from tests.peers.apiserver import RunningServer
from tests.support.bmc import add_machine

SUSHY_MAC = "00:5c:52:31:3a:9c"  # the emulator's fake system NIC (bmc_peers.start_sushy)
SUSHY_SERIAL = "437XR1138R2"  # sushy-emulator's Chassis SerialNumber (the system has none)


def kinds(c: object, name: str) -> list[str]:
    return [e["kind"] for e in c.get(f"/api/v1/machines/{name}/events").json()["items"]]  # type: ignore[attr-defined]


def test_redfish_inspection_fills_the_inventory(lab: RunningServer, tmp_path: Path) -> None:  # noqa: F811
    peer = peers.start_sushy(tmp_path / "sushy")
    try:
        c = lab.client()
        add_machine(c, "n1", "02:00:00:00:20:01", peer)
        r = c.post("/api/v1/machines/n1/inspect")
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["ok"] and out["conflicts"] == [], out
        assert out["found"]["uuid"] == peers.SYSTEM_UUID
        assert out["found"]["macs"] == [SUSHY_MAC] and out["found"]["serial"] == SUSHY_SERIAL
        m = c.get("/api/v1/machines/n1").json()
        assert (m["uuid"], m["serial"]) == (peers.SYSTEM_UUID, SUSHY_SERIAL)
        assert sorted(n["mac"] for n in m["nics"]) == sorted(["02:00:00:00:20:01", SUSHY_MAC])
        assert m["hardware"]["bmc_inspection"]["source"] == "redfish"
        assert peers.reference_power(peer) == "off"  # inspected without booting it
        # Once more, same answer: nothing changes, nothing is recorded.
        before = (kinds(c, "n1"), m["revision"])
        again = c.post("/api/v1/inspect", json={"selector": "lab=power"}).json()["items"]
        assert [i["changes"] for i in again] == [{}]
        assert (kinds(c, "n1"), c.get("/api/v1/machines/n1").json()["revision"]) == before
    finally:
        peer.stop()


def test_conflicting_uuid_is_an_event_not_an_overwrite(
    lab: RunningServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    peer = peers.start_sushy(tmp_path / "sushy")
    try:
        c = lab.client()
        recorded = "4c4c4544-0042-3510-8052-b4c04f4e3032"
        add_machine(c, "n2", "02:00:00:00:20:02", peer)
        assert c.patch("/api/v1/machines/n2", json={"uuid": recorded}).status_code == 200
        out = c.post("/api/v1/machines/n2/inspect").json()
        assert out["conflicts"] == [
            {"field": "uuid", "recorded": recorded, "found": peers.SYSTEM_UUID}
        ]
        assert c.get("/api/v1/machines/n2").json()["uuid"] == recorded
        ev = c.get("/api/v1/events", params={"kind": "machine.inspect.conflict"}).json()["items"]
        assert len(ev) == 1 and ev[0]["data"]["recorded"] == recorded
        assert ev[0]["machine_name"] == "n2"
    finally:
        peer.stop()


def test_inspection_of_an_unreachable_bmc_is_a_per_machine_error(
    lab: RunningServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    peer = peers.start_sushy(tmp_path / "sushy")
    c = lab.client()
    add_machine(c, "n3", "02:00:00:00:20:03", peer)
    peer.stop()
    out = c.post("/api/v1/inspect", json={"selector": "lab=power"}).json()["items"]
    assert [(i["machine"], i["ok"]) for i in out] == [("n3", False)] and out[0]["error"]


@pytest.mark.parametrize("peer_name", ["pyghmi"])
def test_ipmi_inspection_reads_the_system_guid(
    lab: RunningServer,  # noqa: F811
    tmp_path: Path,
    peer_name: str,
) -> None:
    peer = peers.start_pyghmi(tmp_path / peer_name)
    try:
        c = lab.client()
        add_machine(c, "i1", "02:00:00:00:21:01", peer)
        out = c.post("/api/v1/machines/i1/inspect").json()
        assert out["ok"], out
        assert out["found"]["uuid"] == peers.SYSTEM_UUID
        assert "ipmi:system-guid" in out["found"]["source"]
        assert c.get("/api/v1/machines/i1").json()["uuid"] == peers.SYSTEM_UUID
    finally:
        peer.stop()
