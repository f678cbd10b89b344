"""Registering a rack end to end: ``bronze machines import`` (CLI) and ``POST
/api/v1/machines:import`` against a real server on SQLite and PostgreSQL; accepting discovered
machines by command and by rule (import, and the boot plane's discovery)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.boot import profile, script, seed
from tests.support.cli import run

CANARY = "Rack-Canary-Pw-7731"
ENV_CANARY = "Env-Canary-Pw-4409"
BMC = dict(bmc_ports=["1-65535"], bmc_networks=["127.0.0.0/8", "10.0.0.0/8"])

HEADER = (
    "name,macs,serial,labels,bmc_driver,bmc_address,bmc_username,bmc_password_file,"
    "bmc_password_env\n"
)


def rack_csv(tmp_path: Path, rows: list[str]) -> Path:
    (tmp_path / "bmc.pw").write_text(CANARY + "\n")
    path = tmp_path / "rack-r1.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


GOOD = [
    "node-1,52:54:00:aa:00:01@10.1.0.11,SN-1,rack=r1;role=worker,redfish,10.0.9.1:8443,admin,"
    "bmc.pw,",
    "node-2,52:54:00:aa:00:02@10.1.0.12 52:54:00:aa:01:02,SN-2,rack=r1,ipmi,10.0.9.2,admin,,"
    "RACK_PW",
    "node-3,52:54:00:aa:00:03,,rack=r1,,,,,",
]


@pytest.fixture
def reg(tmp_path: Path, db_url: str) -> Any:
    with run_server(tmp_path / "data", db_url, **BMC) as srv:
        yield srv


def cli(srv: RunningServer, tmp_path: Path, *args: str) -> Any:
    return run(srv, tmp_path, *args, extra_env={"RACK_PW": ENV_CANARY})


def events(c: httpx.Client) -> list[dict[str, Any]]:
    return list(c.get("/api/v1/events", params={"limit": 1000}).json()["items"])


def machines(c: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in c.get("/api/v1/machines").json()["items"]}


def test_import_csv_twice_is_a_no_op_and_secrets_stay_out(
    reg: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c = reg.client()
    path = rack_csv(tmp_path, GOOD)
    r = cli(reg, tmp_path, "machines", "import", str(path), "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(out["created"]) == ["node-1", "node-2", "node-3"] and out["errors"] == []
    ms = machines(c)
    assert ms["node-1"]["nics"] == [{"mac": "52:54:00:aa:00:01", "name": None, "ip": "10.1.0.11"}]
    assert ms["node-1"]["labels"] == {"rack": "r1", "role": "worker"}
    assert ms["node-1"]["bmc"]["has_password"] and ms["node-2"]["bmc"]["has_password"]
    assert ms["node-2"]["bmc"]["driver"] == "ipmi" and len(ms["node-2"]["nics"]) == 2
    assert ms["node-3"]["bmc"] is None
    before = (events(c), {n: m["revision"] for n, m in ms.items()})

    r = cli(reg, tmp_path, "machines", "import", str(path))
    assert r.returncode == 0, r.stderr
    assert "0 created, 0 updated, 3 unchanged" in r.stdout
    assert (events(c), {n: m["revision"] for n, m in machines(c).items()}) == before

    # Neither password is in an answer, an event, the CLI's output or the server's log.
    seen = json.dumps([before, r.stdout, r.stderr, caplog.text, machines(c)])
    assert CANARY not in seen and ENV_CANARY not in seen

    # A changed row updates that machine only (labels merge, a new NIC is added).
    rows = [GOOD[0].replace("rack=r1;role=worker", "rack=r1;role=storage"), *GOOD[1:]]
    r = cli(reg, tmp_path, "machines", "import", str(rack_csv(tmp_path, rows)), "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["updated"] == ["node-1"] and sorted(out["unchanged"]) == ["node-2", "node-3"]
    assert machines(c)["node-1"]["labels"]["role"] == "storage"
    new = [e["kind"] for e in events(c)[: len(events(c)) - len(before[0])]]
    assert new == ["machine.updated"]


def test_bad_rows_are_reported_and_nothing_is_written(reg: RunningServer, tmp_path: Path) -> None:
    c = reg.client()
    c.post("/api/v1/machines", json={"name": "old-1", "nics": [{"mac": "52:54:00:bb:00:01"}]})
    rows = [
        *GOOD,
        "node-4,52:54:00:zz:00:04,,,,,,,",  # line 5: bad MAC
        "node-1,52:54:00:aa:00:05,,,,,,,",  # line 6: name of line 2
        "node-6,52:54:00:bb:00:01,,,,,,,",  # line 7: old-1's MAC
        "node-7,52:54:00:aa:00:07,,,redfish,192.0.2.1,admin,missing.pw,",  # line 8: no file
        "node-8,52:54:00:aa:00:08,,,redfish,192.0.2.8,admin,,",  # line 9: refused network
    ]
    path = rack_csv(tmp_path, rows)
    before = len(events(c))
    r = cli(reg, tmp_path, "machines", "import", str(path))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert any(x.startswith("row 5 (node-4): nics.0.mac:") for x in lines), r.stderr
    assert "row 6 (node-1): name: name node-1 is also in row 2" in lines, r.stderr
    assert "row 7 (node-6): mac: MAC 52:54:00:bb:00:01 is machine old-1's" in lines, r.stderr
    assert any(x.startswith("row 8: cannot read BMC password file") for x in lines), r.stderr
    assert "nothing written" in r.stderr
    assert set(machines(c)) == {"old-1"} and len(events(c)) == before

    # The API alone (all rows reach the server): 422 naming each row, nothing written.
    resp = c.post(
        "/api/v1/machines:import",
        json={
            "machines": [
                {"name": "a-1", "nics": [{"mac": "52:54:00:cc:00:01"}]},
                {"name": "a-2", "nics": [{"mac": "52:54:00:cc:00:01"}]},
                {
                    "name": "a-3",
                    "nics": [{"mac": "52:54:00:cc:00:03"}],
                    "bmc": {"address": "192.0.2.8"},
                },
            ]
        },
    )
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_rows"
    assert [(e["row"], e["field"]) for e in err["details"]["errors"]] == [
        (2, "mac"),
        (3, "bmc.address"),
    ]
    assert set(machines(c)) == {"old-1"}

    # --partial takes the good rows and still reports (and fails on) the bad ones.
    r = cli(reg, tmp_path, "machines", "import", str(path), "--partial", "-o", "json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert sorted(out["created"]) == ["node-1", "node-2", "node-3"]
    assert sorted({e["row"] for e in out["errors"]}) == [5, 6, 7, 8, 9]
    assert set(machines(c)) == {"old-1", "node-1", "node-2", "node-3"}


def test_api_never_reads_a_password_path(reg: RunningServer, tmp_path: Path) -> None:
    secret = tmp_path / "server-side.pw"
    secret.write_text("never-read")
    body = {
        "machines": [
            {
                "name": "p-1",
                "nics": [{"mac": "52:54:00:dd:00:01"}],
                "bmc": {"address": "10.0.9.9", "password_file": str(secret)},
            }
        ]
    }
    r = reg.client().post("/api/v1/machines:import", json=body)
    assert r.status_code == 422
    assert r.json()["error"]["details"]["errors"][0]["field"] == "bmc.password"
    # An inline password in a manifest file is refused by the CLI.
    path = tmp_path / "inline.json"
    path.write_text(
        json.dumps(
            [
                {
                    "name": "p-2",
                    "nics": [{"mac": "52:54:00:dd:00:02"}],
                    "bmc": {"address": "10.0.9.9", "password": "x"},
                }
            ]
        )
    )
    r = cli(reg, tmp_path, "machines", "import", str(path))
    assert r.returncode == 1 and "row 1: write the BMC password in a file" in r.stderr


def test_accept_by_command(reg: RunningServer, tmp_path: Path) -> None:
    c = reg.client()
    d = c.post(
        "/api/v1/machines",
        json={
            "name": "discovered-5254",
            "nics": [{"mac": "52:54:00:ee:00:01"}],
            "phase": "discovered",
        },
    ).json()
    r = cli(reg, tmp_path, "machines", "accept", d["id"], "--as", "node-7", "--label", "rack=r1")
    assert r.returncode == 0, r.stderr
    m = c.get(f"/api/v1/machines/{d['id']}").json()
    assert (m["name"], m["phase"], m["labels"]) == ("node-7", "registered", {"rack": "r1"})
    ev = c.get("/api/v1/events", params={"kind": "machine.accepted"}).json()["items"]
    assert ev[0]["data"]["rule"] == "command" and ev[0]["data"]["from"] == "discovered-5254"
    again = c.post(f"/api/v1/machines/{d['id']}/accept", json={})
    assert again.status_code == 409


def test_accept_rules_on_import(reg: RunningServer, tmp_path: Path) -> None:
    """Discovered before the import: a discovered machine holding a row's MAC (or serial) is
    merged into the imported machine."""
    c = reg.client()
    for name, mac, serial in (
        ("discovered-a", "52:54:00:aa:00:03", None),
        ("discovered-b", "52:54:00:ff:00:02", "SN-2"),
    ):
        body = {
            "name": name,
            "nics": [{"mac": mac}],
            "phase": "discovered",
            "serial": serial,
            "uuid": "4c4c4544-0042-3510-8052-b4c04f4e3099" if name.endswith("a") else None,
            "hardware": {"smbios": {"vendor": "x"}},
        }
        assert c.post("/api/v1/machines", json=body).status_code == 201
    r = cli(reg, tmp_path, "machines", "import", str(rack_csv(tmp_path, GOOD)), "-o", "json")
    assert r.returncode == 0, r.stderr
    rules = {a["machine"]: (a["rule"], a["discovered"]) for a in json.loads(r.stdout)["accepted"]}
    assert rules == {"node-3": ("mac", "discovered-a"), "node-2": ("serial", "discovered-b")}
    ms = machines(c)
    assert set(ms) == {"node-1", "node-2", "node-3"}
    assert ms["node-3"]["uuid"] == "4c4c4544-0042-3510-8052-b4c04f4e3099"
    assert "52:54:00:ff:00:02" in [n["mac"] for n in ms["node-2"]["nics"]]
    assert ms["node-2"]["phase"] == "registered" and ms["node-2"]["hardware"]["smbios"]
    r = cli(reg, tmp_path, "machines", "import", str(rack_csv(tmp_path, GOOD)), "-o", "json")
    assert json.loads(r.stdout)["accepted"] == [] and not json.loads(r.stdout)["updated"]


def test_accept_rule_on_discovery(reg: RunningServer, tmp_path: Path) -> None:
    """Imported first: the boot plane's discovery of an unknown MAC whose SMBIOS UUID is an
    imported machine's gives that machine the MAC, with no discovered record."""
    c = reg.client()
    seed(c)
    profile(c, "discovery", agent=True)
    uuid = "4c4c4544-0042-3510-8052-b4c04f4e3077"
    body = {"machines": [{"name": "node-9", "uuid": uuid, "nics": [{"mac": "52:54:00:99:00:01"}]}]}
    assert c.post("/api/v1/machines:import", json=body).status_code == 200
    # A machine created by POST is never a merge target.
    c.post(
        "/api/v1/machines",
        json={
            "name": "manual",
            "uuid": "4c4c4544-0042-3510-8052-b4c04f4e3078",
            "nics": [{"mac": "52:54:00:99:00:02"}],
        },
    )
    assert script(reg, "52:54:00:99:00:03", uuid=uuid.upper()).status_code == 200
    ms = machines(c)
    assert [n["mac"] for n in ms["node-9"]["nics"]] == ["52:54:00:99:00:01", "52:54:00:99:00:03"]
    ev = c.get("/api/v1/events", params={"kind": "machine.accepted"}).json()["items"]
    assert ev[0]["data"]["rule"] == "uuid" and ev[0]["machine_name"] == "node-9"
    r = script(reg, "52:54:00:99:00:04", uuid="4c4c4544-0042-3510-8052-b4c04f4e3078")
    assert r.status_code == 200, r.text
    assert "discovered-525400990004" in machines(c)
