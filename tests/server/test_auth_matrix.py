"""Every endpoint x every role. A route missing from MATRIX fails the test, so new endpoints must
declare who may call them."""

from __future__ import annotations

import pytest

from tests.peers.apiserver import RunningServer

# (method, path template) -> minimum role; None = unauthenticated.
MATRIX: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/api/v1/machines"): "reader",
    ("POST", "/api/v1/machines"): "operator",
    ("GET", "/api/v1/machines/{key}"): "reader",
    ("PATCH", "/api/v1/machines/{key}"): "operator",
    ("DELETE", "/api/v1/machines/{key}"): "operator",
    ("GET", "/api/v1/machines/{key}/events"): "reader",
    ("GET", "/api/v1/events"): "reader",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{name}"): "admin",
}
RANK = {None: -1, "reader": 0, "operator": 1, "admin": 2}
# A valid body/key per endpoint so an authorised call gets past validation.
BODIES = {
    ("POST", "/api/v1/machines"): {"name": "m-new", "nics": [{"mac": "02:00:00:00:09:09"}]},
    ("PATCH", "/api/v1/machines/{key}"): {"labels": {"touched": "yes"}},
    ("POST", "/api/v1/tokens"): {"name": "t-new", "role": "reader"},
}


def api_routes(app: object) -> set[tuple[str, str]]:
    """Every operation the app publishes (read from its OpenAPI document)."""
    paths = app.openapi()["paths"]  # type: ignore[attr-defined]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def test_matrix_covers_every_route(api_sqlite: RunningServer) -> None:
    assert api_routes(api_sqlite.app) == set(MATRIX)


@pytest.mark.parametrize("caller", ["anonymous", "bad-token", "reader", "operator", "admin"])
def test_every_endpoint_every_role(api_sqlite: RunningServer, caller: str) -> None:
    admin = api_sqlite.client()
    tokens = {"anonymous": "", "bad-token": "brz_" + "x" * 43, "admin": api_sqlite.admin_token}
    for role in ("reader", "operator"):
        tokens[role] = admin.post("/api/v1/tokens", json={"name": f"t-{role}", "role": role}).json()["token"]
    role = caller if caller in RANK else None
    c = api_sqlite.client(tokens[caller])
    for (method, template), needed in sorted(MATRIX.items(), key=lambda kv: kv[0][0] == "DELETE"):
        admin.post("/api/v1/machines", json={"name": "target", "nics": [{"mac": "02:00:00:00:09:01"}]})
        admin.post("/api/v1/tokens", json={"name": "victim", "role": "reader"})
        path = template.replace("{key}", "target").replace("{name}", "victim")
        r = c.request(method, path, json=BODIES.get((method, template)))
        allowed = needed is None or (role is not None and RANK[role] >= RANK[needed])
        if allowed:
            assert r.status_code < 400, (caller, method, path, r.status_code, r.text)
        elif role is None:
            assert r.status_code == 401, (caller, method, path, r.status_code)
            assert r.json()["error"]["code"] == "unauthenticated"
        else:
            assert r.status_code == 403, (caller, method, path, r.status_code)
            assert r.json()["error"]["code"] == "forbidden"
        if method == "POST" and r.status_code == 201 and template.endswith("machines"):
            admin.delete("/api/v1/machines/m-new")
        if method == "POST" and r.status_code == 201 and template.endswith("tokens"):
            admin.delete("/api/v1/tokens/t-new")


def test_revoked_token_stops_working_and_last_admin_is_kept(api_sqlite: RunningServer) -> None:
    admin = api_sqlite.client()
    tok = admin.post("/api/v1/tokens", json={"name": "ci", "role": "operator"}).json()["token"]
    assert api_sqlite.client(tok).get("/api/v1/machines").status_code == 200
    listed = admin.get("/api/v1/tokens").json()
    assert all("token" not in t and "hash" not in str(t) for t in listed)
    assert admin.delete("/api/v1/tokens/ci").status_code == 200
    assert api_sqlite.client(tok).get("/api/v1/machines").status_code == 401
    r = admin.delete("/api/v1/tokens/bootstrap-admin")
    assert r.status_code == 409 and "last admin" in r.json()["error"]["message"]
    assert admin.post("/api/v1/tokens", json={"name": "ci", "role": "reader"}).status_code == 409
    for header in ("Bearer", "Basic abc", f"Token {api_sqlite.admin_token}", "Bearer " + "brz_" + "a" * 200):
        r = api_sqlite.client("").get("/api/v1/machines", headers={"Authorization": header})
        assert r.status_code == 401, header
