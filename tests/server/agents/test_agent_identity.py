"""An agent reporting another hardware identity is an event and a visible condition, never an
overwrite of the record (a real server, a real ``bronze-agent``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.agents.identity import conflicts, reported
from tests.peers.apiserver import RunningServer, run_server
from tests.support.agentlab import spawn_agent
from tests.support.paths import FIXTURES
from tests.support.wait import eventually

DELL_UUID = "4c4c4544-0051-3510-8052-b7c04f4e3133"  # the dell-r650 fixture's SMBIOS UUID


@pytest.mark.parametrize(
    ("recorded", "report", "expected"),
    [
        ({"uuid": None, "serial": None}, {"uuid": "u1", "serial": "s1"}, {}),
        ({"uuid": "U1", "serial": "s1"}, {"uuid": "u1", "serial": " s1"}, {}),
        (
            {"uuid": "u1", "serial": None},
            {"uuid": "u2", "serial": "s"},
            {"uuid": {"recorded": "u1", "reported": "u2"}},
        ),
        (
            {"uuid": "u1", "serial": "s1"},
            {"uuid": "u1", "serial": "s2"},
            {"serial": {"recorded": "s1", "reported": "s2"}},
        ),
        ({"uuid": "u1", "serial": "s1"}, {}, {}),
    ],
    ids=["nothing recorded", "case and space", "uuid differs", "serial differs", "no report"],
)
def test_conflicts(
    recorded: dict[str, str | None], report: dict[str, str], expected: object
) -> None:
    assert conflicts(recorded, report) == expected


def test_reported_reads_smbios() -> None:
    assert reported({"smbios": {"uuid": "U", "serial": "", "vendor": "x"}}) == {"uuid": "U"}
    assert reported({}) == {}


@pytest.fixture
def srv(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data",
        sqlite_url,
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        agent_heartbeat_interval=1.0,
    ) as s:
        yield s


def _machine_with_agent(
    srv: RunningServer, tmp: Path, name: str, uuid: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    r = c.post(
        "/api/v1/machines",
        json={"name": name, "uuid": uuid, "nics": [{"mac": "02:00:00:00:0f:01"}]},
    )
    assert r.status_code == 201, r.text
    tok = c.post(f"/api/v1/machines/{name}/enrollment-token", json={"boot_ref": "b1"}).json()
    root = tmp / name / "root"
    shutil.copytree(FIXTURES / "dell-r650", root, symlinks=True)
    (root / "etc/bronze").mkdir(parents=True, exist_ok=True)
    (root / "etc/bronze/ca.pem").write_bytes(srv.app.state.agent_api.ca.cert_pem)
    (root / "proc/cmdline").write_text(f"console=ttyS0 {tok['kernel_args']}\n")
    spawn_agent(root, procs)
    eventually(lambda: c.get(f"/api/v1/machines/{name}/agent").json()["connected"], 30)


def test_another_uuid_is_an_event_not_an_overwrite(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    recorded = "11111111-2222-3333-4444-555555555555"
    _machine_with_agent(srv, tmp_path, "ident", recorded, procs)
    state = eventually(
        lambda: (a := c.get("/api/v1/machines/ident/agent").json())["identity_conflict"] and a, 30
    )
    assert state["identity_conflict"]["fields"]["uuid"] == {
        "recorded": recorded,
        "reported": DELL_UUID,
    }
    m = c.get("/api/v1/machines/ident").json()
    assert m["uuid"] == recorded  # kept
    assert (m["hardware"].get("smbios") or {}).get("uuid") != DELL_UUID  # not overwritten
    events = c.get("/api/v1/machines/ident/events", params={"kind": "agent.identity.mismatch"})
    (ev,) = events.json()["items"]
    assert DELL_UUID in ev["message"] and "kept" in ev["message"]


def test_matching_identity_updates_hardware(
    srv: RunningServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    c = srv.client()
    _machine_with_agent(srv, tmp_path, "same", DELL_UUID.upper(), procs)
    m = eventually(lambda: (x := c.get("/api/v1/machines/same").json())["hardware"] and x, 30)
    assert m["hardware"]["smbios"]["uuid"] == DELL_UUID
    assert c.get("/api/v1/machines/same/agent").json()["identity_conflict"] is None
