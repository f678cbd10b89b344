"""The inventory API end to end: real uvicorn, real SQLite and PostgreSQL, HTTP through httpx."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.models import Machine
from tests.peers.apiserver import RunningServer


def body(name: str, mac: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "nics": [{"mac": mac}], **extra}


def test_create_get_patch_delete(api: RunningServer) -> None:
    c = api.client()
    r = c.post(
        "/api/v1/machines",
        json=body(
            "web-1",
            "AA-BB-CC-00-00-01",
            uuid="4C4C4544-0000-1000-8000-000000000001",
            serial="SN1",
            labels={"rack": "r1"},
        ),
    )
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["nics"] == [{"mac": "aa:bb:cc:00:00:01", "name": None, "ip": None}]
    assert m["uuid"] == "4c4c4544-0000-1000-8000-000000000001"
    assert m["phase"] == "registered" and m["power"]["observed"] == "unknown"
    assert c.get(f"/api/v1/machines/{m['id']}").json()["name"] == "web-1"
    assert c.get("/api/v1/machines/web-1").json()["id"] == m["id"]

    r = c.patch(
        "/api/v1/machines/web-1",
        json={"labels": {"rack": None, "role": "web"}, "phase": "maintenance"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"role": "web"} and r.json()["phase"] == "maintenance"
    assert r.json()["revision"] == 2

    assert c.delete("/api/v1/machines/web-1").status_code == 204
    assert c.get("/api/v1/machines/web-1").status_code == 404
    kinds = [
        e["kind"] for e in c.get("/api/v1/events", params={"machine": m["id"]}).json()["items"]
    ]
    assert kinds == ["machine.deleted", "machine.updated", "machine.created"]


@pytest.mark.parametrize(
    "second",
    [
        body("b", "aa:bb:cc:00:00:02"),
        body("b", "AABBCC000002"),
        body("b", "aabb.cc00.0002"),
        body("a", "aa:bb:cc:00:00:99"),
        body("b", "aa:bb:cc:00:00:99", uuid="00000000-0000-0000-0000-00000000000a"),
    ],
    ids=["same-mac", "mac-bare-hex", "mac-dotted", "same-name", "same-uuid"],
)
def test_conflicts(api: RunningServer, second: dict[str, Any]) -> None:
    c = api.client()
    first = body("a", "aa-bb-cc-00-00-02", uuid="00000000-0000-0000-0000-00000000000A")
    assert c.post("/api/v1/machines", json=first).status_code == 201
    r = c.post("/api/v1/machines", json=second)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "conflict"
    # The 409 says which field and which machine already holds the value.
    assert err["details"]["machine"]["name"] == "a", err
    assert err["details"]["field"] in ("mac", "name", "uuid"), err
    assert "already belongs to machine a (" in err["message"], err
    assert len(c.get("/api/v1/machines").json()["items"]) == 1


def test_patch_conflict_names_the_holder(api: RunningServer) -> None:
    c = api.client()
    assert c.post("/api/v1/machines", json=body("a", "aa:bb:cc:00:00:01")).status_code == 201
    assert c.post("/api/v1/machines", json=body("b", "aa:bb:cc:00:00:02")).status_code == 201
    r = c.patch("/api/v1/machines/b", json={"nics": [{"mac": "AA-BB-CC-00-00-01"}]})
    assert r.status_code == 409, r.text
    details = r.json()["error"]["details"]
    assert details == {
        "field": "mac",
        "value": "aa:bb:cc:00:00:01",
        "machine": {"id": details["machine"]["id"], "name": "a"},
    }


def test_concurrent_creates_with_one_mac(api: RunningServer) -> None:
    results: list[int] = []
    barrier = threading.Barrier(2)

    def create(name: str, mac: str) -> None:
        with api.client() as c:
            barrier.wait()
            results.append(c.post("/api/v1/machines", json=body(name, mac)).status_code)

    threads = [
        threading.Thread(target=create, args=("x1", "02:00:00:00:00:01")),
        threading.Thread(target=create, args=("x2", "02-00-00-00-00-01")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201, 409]


@pytest.mark.parametrize(
    "payload,field",
    [
        (body("a", "zz:bb:cc:00:00:01"), "nics"),
        (body("A_b", "aa:bb:cc:00:00:01"), "name"),
        (body("a", "aa:bb:cc:00:00:01", labels={"bad key": "v"}), "labels"),
        (body("a", "aa:bb:cc:00:00:01", labels={"k": "v;reboot"}), "labels"),
        ({"name": "a", "nics": []}, "nics"),
        ({"name": "a", "nics": [{"mac": "aa:bb:cc:00:00:01"}, {"mac": "AABBCC000001"}]}, "nics"),
        (body("a", "aa:bb:cc:00:00:01", phase="exploded"), "phase"),
        (body("a", "aa:bb:cc:00:00:01", uuid="not-a-uuid"), "uuid"),
        (body("a", "aa:bb:cc:00:00:01", bmc={"address": "http://10.0.0.1/x"}), "bmc"),
        (body("a", "aa:bb:cc:00:00:01", unknown_field=1), "unknown_field"),
        (body("node-a\n", "aa:bb:cc:00:00:01"), "name"),
        (body("a", "aa:bb:cc:00:00:01", labels={"rack\n": "v"}), "labels"),
        (body("a", "aa:bb:cc:00:00:01", labels={"rack": "v1\n"}), "labels"),
    ],
    ids=[
        "bad-mac",
        "bad-name",
        "bad-label-key",
        "bad-label-value",
        "no-nics",
        "duplicate-mac",
        "bad-phase",
        "bad-uuid",
        "bmc-url",
        "unknown-field",
        "name-trailing-newline",
        "label-key-trailing-newline",
        "label-value-trailing-newline",
    ],
)
def test_invalid_input_is_422(
    api_sqlite: RunningServer, payload: dict[str, Any], field: str
) -> None:
    r = api_sqlite.client().post("/api/v1/machines", json=payload)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid" and field in r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "bmc_password_enc"},
        {"sort": "bmc_password"},
        {"selector": "rack in (a"},
        {"limit": 0},
        {"limit": 5000},
        {"cursor": "!!!"},
        {"phase": "nope"},
    ],
    ids=[
        "sort-secret-column",
        "sort-unknown",
        "bad-selector",
        "limit-0",
        "limit-huge",
        "bad-cursor",
        "bad-phase",
    ],
)
def test_invalid_list_queries(api_sqlite: RunningServer, params: dict[str, Any]) -> None:
    r = api_sqlite.client().get("/api/v1/machines", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid"


def _seed(c: Any, n: int) -> None:
    for i in range(n):
        labels = {"rack": f"r{i % 3}", "role": ["worker", "storage", "control"][i % 3]}
        if i % 5 == 0:
            labels["maintenance"] = ""
        r = c.post(
            "/api/v1/machines", json=body(f"m{i:03d}", f"02:00:00:00:01:{i:02x}", labels=labels)
        )
        assert r.status_code == 201


def test_selectors_and_phase(api: RunningServer) -> None:
    c = api.client()
    _seed(c, 30)
    c.patch("/api/v1/machines/m001", json={"phase": "ready"})

    def names(**params: Any) -> list[str]:
        r = c.get("/api/v1/machines", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return [m["name"] for m in r.json()["items"]]

    expected = [f"m{i:03d}" for i in range(30) if i % 3 == 0 and i % 5 != 0]
    assert names(selector="rack=r0,role in (worker,storage),!maintenance") == expected
    assert names(selector="role notin (worker,storage)") == [
        f"m{i:03d}" for i in range(30) if i % 3 == 2
    ]
    assert names(selector="maintenance") == [f"m{i:03d}" for i in range(0, 30, 5)]
    assert names(selector="rack!=r0") == [f"m{i:03d}" for i in range(30) if i % 3 != 0]
    assert names(phase="ready") == ["m001"]


@pytest.mark.parametrize("sort", ["name", "-name", "created_at", "-updated_at", "phase"])
def test_cursor_pagination_visits_every_machine_once(api: RunningServer, sort: str) -> None:
    c = api.client()
    _seed(c, 23)
    c.patch("/api/v1/machines/m004", json={"phase": "ready"})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5, "sort": sort}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/api/v1/machines", params=params).json()
        seen += [m["name"] for m in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 5
    assert sorted(seen) == [f"m{i:03d}" for i in range(23)]
    if sort == "name":
        assert seen == sorted(seen)
    if sort == "-name":
        assert seen == sorted(seen, reverse=True)
    bad = c.get(
        "/api/v1/machines",
        params={
            "limit": 5,
            "sort": "name" if sort != "name" else "-name",
            "cursor": page_cursor(c, sort),
        },
    )
    assert bad.status_code == 422


def page_cursor(c: Any, sort: str) -> str:
    return c.get("/api/v1/machines", params={"limit": 1, "sort": sort}).json()["next_cursor"]


def test_events_filters_and_pagination(api: RunningServer) -> None:
    c = api.client()
    _seed(c, 4)
    c.patch("/api/v1/machines/m001", json={"labels": {"x": "y"}})
    page = c.get("/api/v1/events", params={"kind": "machine", "limit": 3}).json()
    assert [e["kind"] for e in page["items"]] == [
        "machine.updated",
        "machine.created",
        "machine.created",
    ]
    ids = [e["id"] for e in page["items"]]
    assert ids == sorted(ids, reverse=True)
    rest = c.get(
        "/api/v1/events", params={"kind": "machine", "limit": 3, "cursor": page["next_cursor"]}
    ).json()
    assert [e["machine_name"] for e in rest["items"]] == ["m001", "m000"] and rest[
        "next_cursor"
    ] is None
    assert [
        e["kind"] for e in c.get("/api/v1/events", params={"machine": "m001"}).json()["items"]
    ] == ["machine.updated", "machine.created"]
    newest = page["items"][0]["created_at"]
    assert (
        c.get("/api/v1/events", params={"since": newest, "kind": "machine.updated"}).json()[
            "items"
        ][0]["machine_name"]
        == "m001"
    )
    assert c.get("/api/v1/events", params={"until": "2000-01-01T00:00:00Z"}).json()["items"] == []
    assert (
        c.get("/api/v1/machines/m001/events").json()["items"][0]["actor"] == "token:bootstrap-admin"
    )


def test_bmc_password_is_write_only_and_encrypted(api: RunningServer) -> None:
    canary = "Canary-Pw-7f3e9a"
    c = api.client()
    r = c.post(
        "/api/v1/machines",
        json=body(
            "b1",
            "02:00:00:00:02:01",
            bmc={
                "driver": "redfish",
                "address": "10.1.2.3:8443",
                "username": "admin",
                "password": canary,
            },
        ),
    )
    assert r.status_code == 201, r.text
    assert canary not in r.text and r.json()["bmc"]["has_password"] is True
    r = c.patch(
        "/api/v1/machines/b1",
        json={
            "bmc": {
                "driver": "redfish",
                "address": "10.1.2.4",
                "username": "admin",
                "verify_tls": False,
            }
        },
    )
    assert r.status_code == 200 and r.json()["bmc"]["has_password"] is True  # kept when not resent
    for path in (
        "/api/v1/machines/b1",
        "/api/v1/machines",
        "/api/v1/events",
        "/api/v1/machines/b1/events",
    ):
        assert canary not in c.get(path).text
    kinds = [e["kind"] for e in c.get("/api/v1/events").json()["items"]]
    assert "machine.bmc.tls_insecure" in kinds
    engine = create_engine(api.settings.effective_database_url)
    with engine.connect() as conn:
        dump = " ".join(
            str(row)
            for t in ("machines", "events", "nics", "machine_labels", "api_tokens")
            for row in conn.execute(text(f"SELECT * FROM {t}"))
        )  # noqa: S608 - fixed names
    engine.dispose()
    assert canary not in dump and "gAAAAA" in dump  # Fernet token stored
    raw = c.get("/api/v1/machines/b1").json()
    assert "password" not in raw["bmc"]


def test_patch_uuid_conflict_and_name_change(api: RunningServer) -> None:
    c = api.client()
    _seed(c, 2)
    r = c.patch("/api/v1/machines/m000", json={"nics": [{"mac": "02:00:00:00:01:01"}]})
    assert r.status_code == 409
    r = c.patch("/api/v1/machines/m000", json={"name": "renamed"})
    assert r.status_code == 200 and c.get("/api/v1/machines/renamed").status_code == 200
    r = c.patch("/api/v1/machines/renamed", json={"name": "m001"})
    assert r.status_code == 409
    assert c.patch("/api/v1/machines/nope", json={"phase": "ready"}).status_code == 404


def test_unknown_route_and_method_are_json(api_sqlite: RunningServer) -> None:
    c = api_sqlite.client()
    r = c.get("/api/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = c.put("/api/v1/machines")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = c.post(
        "/api/v1/machines", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid"
    assert c.get("/healthz").json() == {
        "status": "ok",
        "components": {"agent_api": "disabled", "boot_plane": "disabled"},
    }
    assert "/api/v1/machines" in c.get("/openapi.json").json()["paths"]


def test_docs_page_is_served_from_the_package(api_sqlite: RunningServer) -> None:
    """/docs works on an air-gapped network: every script and style it names is ours."""
    import re

    page = httpx.get(f"{api_sqlite.url}/docs", timeout=10)
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert urls and all(u.startswith("/docs/static/") for u in urls), urls
    for u in urls:
        r = httpx.get(f"{api_sqlite.url}{u}", timeout=10)
        assert r.status_code == 200 and len(r.content) > 500, u
    assert "cdn" not in page.text.lower()


def test_every_write_changes_the_served_page(api: RunningServer) -> None:
    """Each write of the machines API renders the machine's stored view in its own commit
    (``server/inventory/listview.py``): right after it no view is stale, the page served
    changes, and it is byte for byte the slow path's reading of the same database."""
    c = api.client()
    db = Database.connect(api.settings.database_url)

    def served() -> bytes:
        with db.read() as s:
            stale = s.scalar(select(func.count()).where(Machine.list_view.is_(None)))
            slow = inventory.list_machines(s, limit=100)
        assert stale == 0  # rendered by the write's own commit, not by a later read
        r = c.get("/api/v1/machines", params={"limit": 100})
        assert r.status_code == 200, r.text
        assert (
            r.content
            == json.dumps(
                {"items": slow.items, "next_cursor": slow.next_cursor},
                ensure_ascii=False,
                allow_nan=False,
                separators=(",", ":"),
            ).encode()
        )
        one = c.get("/api/v1/machines/web-1")
        if one.status_code == 200:
            assert (
                one.content
                == json.dumps(
                    next(m for m in slow.items if m["name"] == "web-1"),
                    ensure_ascii=False,
                    allow_nan=False,
                    separators=(",", ":"),
                ).encode()
            )
        return r.content

    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("post", "/api/v1/machines", body("web-1", "aa:bb:cc:00:00:01", labels={"rack": "r1"})),
        ("post", "/api/v1/machines", body("web-2", "aa:bb:cc:00:00:02")),
        ("patch", "/api/v1/machines/web-1", {"labels": {"rack": None, "role": "web"}}),
        ("patch", "/api/v1/machines/web-1", {"labels": {"role": "db"}}),
        (
            "patch",
            "/api/v1/machines/web-1",
            {"nics": [{"mac": "aa:bb:cc:00:00:01", "name": "eno1", "ip": "10.9.0.5"}]},
        ),
        ("patch", "/api/v1/machines/web-1", {"phase": "maintenance"}),
        ("patch", "/api/v1/machines/web-1", {"serial": "SN é", "hardware": {"cpus": 2}}),
        ("patch", "/api/v1/machines/web-1", {"fault_reason": "fan", "boot_from": "network"}),
        (
            "patch",
            "/api/v1/machines/web-1",
            {"bmc": {"address": "10.0.0.7", "username": "u", "password": "p"}},
        ),
        ("patch", "/api/v1/machines/web-1", {"bmc": None}),
        ("patch", "/api/v1/machines/web-1", {"name": "web-1b"}),
        ("patch", "/api/v1/machines/web-1b", {"name": "web-1"}),
        ("delete", "/api/v1/machines/web-2", None),
    ]
    try:
        pages = [served()]
        for method, path, doc in writes:
            r = c.request(method, path, json=doc)
            assert r.status_code in (200, 201, 204), (path, doc, r.text)
            pages.append(served())
            assert pages[-1] != pages[-2], (method, path, doc)
    finally:
        db.dispose()
