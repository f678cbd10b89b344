"""Every endpoint x every role. A route missing from MATRIX fails the test, so new endpoints must
declare who may call them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.image_manifest import ImageFile, Manifest, public_key_text, sign
from tests.peers.apiserver import RunningServer, run_server
from tests.support.ports import free_port

# (method, path template) -> minimum role; None = unauthenticated.
MATRIX: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/api/v1/machines"): "reader",
    ("POST", "/api/v1/machines"): "operator",
    ("GET", "/api/v1/machines/{key}"): "reader",
    ("PATCH", "/api/v1/machines/{key}"): "operator",
    ("DELETE", "/api/v1/machines/{key}"): "operator",
    ("GET", "/api/v1/machines/{key}/events"): "reader",
    ("POST", "/api/v1/machines:import"): "operator",
    ("POST", "/api/v1/machines/{key}/accept"): "operator",
    ("POST", "/api/v1/machines/{key}/inspect"): "operator",
    ("POST", "/api/v1/inspect"): "operator",
    ("GET", "/api/v1/events"): "reader",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{name}"): "admin",
    ("POST", "/api/v1/machines/{key}/power"): "operator",
    ("GET", "/api/v1/machines/{key}/power"): "reader",
    ("PUT", "/api/v1/machines/{key}/boot-device"): "operator",
    ("POST", "/api/v1/power"): "operator",
    ("GET", "/api/v1/operations"): "reader",
    ("GET", "/api/v1/operations/{op_id}"): "reader",
    ("GET", "/api/v1/config-patches"): "reader",
    ("POST", "/api/v1/config-patches"): "operator",
    ("DELETE", "/api/v1/config-patches/{patch_id}"): "operator",
    ("GET", "/api/v1/machines/{key}/config"): "reader",
    ("POST", "/api/v1/machines/{key}/config/dry-run"): "reader",
    ("POST", "/api/v1/machines/{key}/enrollment-token"): "operator",
    ("GET", "/api/v1/machines/{key}/agent"): "reader",
    ("POST", "/api/v1/machines/{key}/agent/revoke"): "operator",
    ("POST", "/api/v1/machines/{key}/reboot"): "operator",
    ("GET", "/api/v1/machines/{key}/node/{op}"): "reader",
    ("POST", "/api/v1/machines/{key}/config/confirm"): "operator",
    ("GET", "/api/v1/profiles"): "reader",
    ("POST", "/api/v1/profiles"): "operator",
    ("GET", "/api/v1/profiles/{name}"): "reader",
    ("PUT", "/api/v1/profiles/{name}"): "operator",
    ("DELETE", "/api/v1/profiles/{name}"): "operator",
    ("GET", "/api/v1/assets"): "reader",
    ("GET", "/api/v1/assets/{name}"): "reader",
    ("PUT", "/api/v1/assets/{name}"): "operator",
    ("DELETE", "/api/v1/assets/{name}"): "operator",
    ("GET", "/api/v1/images"): "reader",
    ("POST", "/api/v1/images"): "operator",
    ("GET", "/api/v1/images/{name}"): "reader",
    ("GET", "/api/v1/images/{name}/manifest"): "reader",
    ("PUT", "/api/v1/images/{name}/signature"): "operator",
    ("DELETE", "/api/v1/images/{name}"): "operator",
    ("GET", "/api/v1/upgrades"): "reader",
    ("POST", "/api/v1/upgrades"): "operator",
    ("GET", "/api/v1/upgrades/{rollout_id}"): "reader",
    ("POST", "/api/v1/upgrades/{rollout_id}/pause"): "operator",
    ("POST", "/api/v1/upgrades/{rollout_id}/resume"): "operator",
    ("POST", "/api/v1/upgrades/{rollout_id}/abort"): "operator",
    ("GET", "/api/v1/provisions"): "reader",
    ("POST", "/api/v1/provisions"): "operator",
    ("GET", "/api/v1/provisions/{rollout_id}"): "reader",
    ("POST", "/api/v1/provisions/{rollout_id}/pause"): "operator",
    ("POST", "/api/v1/provisions/{rollout_id}/resume"): "operator",
    ("POST", "/api/v1/provisions/{rollout_id}/cancel"): "operator",
    ("POST", "/api/v1/machines/{key}/deprovision"): "operator",
    ("POST", "/api/v1/deprovisions"): "operator",
    ("GET", "/api/v1/deprovisions/{rollout_id}"): "reader",
    ("GET", "/boot.ipxe"): None,
    ("GET", "/assets/{name}"): None,
    ("HEAD", "/assets/{name}"): None,
    ("GET", "/api/v1/boot/decide"): "boot",
    ("POST", "/api/v1/boot/timeline"): "boot",
    ("GET", "/api/v1/boot/timeline"): "reader",
    ("GET", "/api/v1/machines/{key}/timeline"): "reader",
}
# "boot" is beside the nesting, not in it: only boot and admin tokens may call those endpoints,
# and a boot token may call nothing else.
# Allowed callers that may still get this status (the machine's agent is not connected here).
ALLOWED_STATUS = {
    ("GET", "/api/v1/machines/{key}/node/{op}"): 409,
    ("POST", "/api/v1/machines/{key}/reboot"): 409,  # agent_never_connected
}
RANK = {None: -1, "reader": 0, "operator": 1, "admin": 2}
# A valid body/key per endpoint so an authorised call gets past validation.
BODIES = {
    ("POST", "/api/v1/machines"): {"name": "m-new", "nics": [{"mac": "02:00:00:00:09:09"}]},
    ("PATCH", "/api/v1/machines/{key}"): {"labels": {"touched": "yes"}},
    ("POST", "/api/v1/tokens"): {"name": "t-new", "role": "reader"},
    ("POST", "/api/v1/machines/{key}/power"): {"action": "on"},
    ("PUT", "/api/v1/machines/{key}/boot-device"): {"device": "pxe"},
    ("POST", "/api/v1/power"): {"selector": "slot={slot}", "action": "off"},
    ("POST", "/api/v1/config-patches"): {
        "name": "p-new",
        "scope": "fleet",
        "patch": {"sysctls": {"a.b": "1"}},
    },
    ("POST", "/api/v1/machines/{key}/config/dry-run"): {"patch": {"hostname": "dry"}},
    ("POST", "/api/v1/machines/{key}/config/confirm"): {"version": "0" * 32},
    ("POST", "/api/v1/profiles"): {"name": "p-new", "kernel": "http://192.0.2.1/vmlinuz"},
    ("PUT", "/api/v1/profiles/{name}"): {"kernel": "http://192.0.2.1/vmlinuz2"},
    ("POST", "/api/v1/boot/timeline"): {
        "events": [{"kind": "DISCOVER", "mac": "02:00:00:00:09:01", "at": 1_800_000_000.0}]
    },
}
VICTIM_ASSET = b"victim asset"
SIGNER = Ed25519PrivateKey.generate()
VICTIM_IMAGE = Manifest(
    "victim", "1", ImageFile("victim", hashlib.sha256(VICTIM_ASSET).hexdigest()), (), ()
)
# The per-endpoint machine t{i} is not ready, so an authorised plan is refused on content (422);
# the {rollout_id} routes act on a real rollout made in setup.
ALLOWED_STATUS[("POST", "/api/v1/upgrades")] = 422
BODIES[("POST", "/api/v1/upgrades")] = {
    "image": "victim",
    "selector": "slot=x",
    "preserve": True,
    "health_timeout_seconds": 3600,
}
# A provision naming a missing image (422: an authorised caller got past the role check); t{i} is
# registered, so it is not deprovisionable (422); {rollout_id} is a real provision / deprovision.
ALLOWED_STATUS[("POST", "/api/v1/provisions")] = 422
BODIES[("POST", "/api/v1/provisions")] = {"image": "no-such-image", "selector": "slot=x"}
ALLOWED_STATUS[("POST", "/api/v1/machines/{key}/deprovision")] = 422
BODIES[("POST", "/api/v1/machines/{key}/deprovision")] = {"wipe": "quick"}
ALLOWED_STATUS[("POST", "/api/v1/deprovisions")] = 422
BODIES[("POST", "/api/v1/deprovisions")] = {"selector": "slot=x", "wipe": "quick"}
BODIES[("POST", "/api/v1/images")] = {"name": "i-new", "version": "1", "kernel": "victim"}
BODIES[("PUT", "/api/v1/images/{name}/signature")] = {"signature": sign(VICTIM_IMAGE, SIGNER)}
BODIES[("POST", "/api/v1/machines:import")] = {
    "machines": [{"name": "imp-new", "nics": [{"mac": "02:00:00:00:fb:01"}]}]
}
BODIES[("POST", "/api/v1/inspect")] = {"selector": "slot={slot}"}
ALLOWED_STATUS[("POST", "/api/v1/machines/{key}/accept")] = 409  # t{i} is not discovered
QUERIES = {
    ("GET", "/boot.ipxe"): "?mac=02:00:00:00:0a:01",
    ("GET", "/api/v1/boot/decide"): "?mac=02:00:00:00:0a:01",
    ("GET", "/api/v1/boot/timeline"): "?mac=02:00:00:00:0a:01",
    ("PUT", "/api/v1/assets/{name}"): "?sha256=" + hashlib.sha256(VICTIM_ASSET).hexdigest(),
}


def may_call(role: str | None, needed: str | None) -> bool:
    if needed is None:
        return True
    if role is None:
        return False
    if needed == "boot":
        return role in ("boot", "admin")
    return role != "boot" and RANK[role] >= RANK[needed]


def api_routes(app: object) -> set[tuple[str, str]]:
    """Every operation the app publishes (read from its OpenAPI document)."""
    paths = app.openapi()["paths"]  # type: ignore[attr-defined]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


@pytest.fixture
def lab_api(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    """BMC addresses may be on loopback here; every machine's BMC is a closed 127.0.0.1 port."""
    with run_server(
        tmp_path / "data",
        sqlite_url,
        bmc_networks=["127.0.0.0/8"],
        bmc_ports=["1-65535"],  # the closed port is a free (ephemeral) one
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        image_trusted_keys=[public_key_text(SIGNER)],
    ) as srv:
        yield srv


def test_matrix_covers_every_route(lab_api: RunningServer) -> None:
    assert api_routes(lab_api.app) == set(MATRIX)


@pytest.mark.parametrize(
    "caller", ["anonymous", "bad-token", "boot", "reader", "operator", "admin"]
)
def test_every_endpoint_every_role(lab_api: RunningServer, caller: str) -> None:
    admin = lab_api.client()
    tokens = {"anonymous": "", "bad-token": "brz_" + "x" * 43, "admin": lab_api.admin_token}
    for role in ("boot", "reader", "operator"):
        tokens[role] = admin.post(
            "/api/v1/tokens", json={"name": f"t-{role}", "role": role}
        ).json()["token"]
    role = caller if caller in RANK or caller == "boot" else None
    c = lab_api.client(tokens[caller])
    closed = free_port()
    admin.post(
        "/api/v1/machines",
        json={
            "name": "opm",
            "nics": [{"mac": "02:00:00:00:0a:01"}],
            "labels": {"slot": "opm"},
            "bmc": {"driver": "redfish", "scheme": "http", "address": f"127.0.0.1:{closed}"},
        },
    )
    op = admin.post("/api/v1/power", json={"selector": "slot=opm", "action": "on"}).json()
    rollout = _setup_rollout(admin)
    provision, deprovision = _setup_provisions(admin)
    ordered = sorted(MATRIX.items(), key=lambda kv: kv[0][0] == "DELETE")
    for i, ((method, template), needed) in enumerate(ordered):
        # A fresh target per endpoint, so one call's running operation cannot make the next a 409.
        admin.post(
            "/api/v1/machines",
            json={
                "name": f"t{i}",
                "nics": [{"mac": f"02:00:00:00:09:{i:02x}"}],
                "labels": {"slot": f"s{i}"},
                "bmc": {"driver": "redfish", "scheme": "http", "address": f"127.0.0.1:{closed}"},
            },
        )
        admin.post("/api/v1/tokens", json={"name": "victim", "role": "reader"})
        admin.put(
            "/api/v1/assets/victim",
            params={"sha256": QUERIES[("PUT", "/api/v1/assets/{name}")][8:]},
            content=VICTIM_ASSET,
        )
        admin.post("/api/v1/profiles", json={"name": "victim", "kernel": "http://192.0.2.1/k"})
        admin.post("/api/v1/images", json={"name": "victim", "version": "1", "kernel": "victim"})
        path = (
            template.replace("{key}", f"t{i}")
            .replace("{name}", "victim")
            .replace("{op_id}", op["id"])
            .replace("{op}", "stats")
        )
        if template.startswith("/api/v1/provisions/"):
            path = path.replace("{rollout_id}", provision)
        elif template.startswith("/api/v1/deprovisions/"):
            path = path.replace("{rollout_id}", deprovision)
        path = path.replace("{rollout_id}", rollout)
        if "{patch_id}" in template:
            patch = admin.post(
                "/api/v1/config-patches",
                json={
                    "name": f"victim-{i}",
                    "scope": "selector",
                    "selector": f"slot=s{i}",
                    "patch": {"hostname": "victim"},
                },
            ).json()
            path = path.replace("{patch_id}", patch["id"])
        payload = BODIES.get((method, template))
        if payload and "selector" in payload:
            payload = {**payload, "selector": f"slot=s{i}"}
        path += QUERIES.get((method, template), "")
        if (method, template) == ("PUT", "/api/v1/assets/{name}"):
            r = c.request(method, path, content=VICTIM_ASSET)
        else:
            r = c.request(method, path, json=payload)
        allowed = may_call(role, needed)
        if allowed and r.status_code == ALLOWED_STATUS.get((method, template)):
            pass
        elif allowed:
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
        if method == "POST" and r.status_code == 201 and template.endswith("profiles"):
            admin.delete("/api/v1/profiles/p-new")
        if method == "POST" and r.status_code == 201 and template.endswith("images"):
            admin.delete("/api/v1/images/i-new")


def _setup_rollout(admin: httpx.Client) -> str:
    """A rollout over one ready machine (its agent never connects: it stays in flight)."""
    admin.post(
        "/api/v1/machines",
        json={"name": "upm", "nics": [{"mac": "02:00:00:00:0b:01"}], "labels": {"slot": "upm"}},
    )
    for phase in ("provisioning", "ready"):
        assert admin.patch("/api/v1/machines/upm", json={"phase": phase}).status_code == 200
    admin.put(
        "/api/v1/assets/victim",
        params={"sha256": hashlib.sha256(VICTIM_ASSET).hexdigest()},
        content=VICTIM_ASSET,
    )
    signed = Manifest("upimg", "1", VICTIM_IMAGE.kernel, (), ())
    admin.post(
        "/api/v1/images",
        json={
            "name": "upimg",
            "version": "1",
            "kernel": "victim",
            "signature": sign(signed, SIGNER),
        },
    )
    r = admin.post(
        "/api/v1/upgrades",
        json={"image": "upimg", "selector": "slot=upm", "preserve": True},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _setup_provisions(admin: httpx.Client) -> tuple[str, str]:
    """A provision of a registered machine and a deprovision of a ready one (no agent: both
    stay in flight). Runs after ``_setup_rollout`` (its signed image ``upimg``)."""
    for name, phases in (("pvm", ()), ("dpm", ("provisioning", "ready"))):
        admin.post(
            "/api/v1/machines",
            json={"name": name, "nics": [{"mac": f"02:00:00:00:0c:{len(phases):02x}"}],
                  "labels": {"slot": name}},
        )  # fmt: skip
        for phase in phases:
            assert admin.patch(f"/api/v1/machines/{name}", json={"phase": phase}).is_success
    p = admin.post("/api/v1/provisions", json={"image": "upimg", "selector": "slot=pvm"})
    assert p.status_code == 201, p.text
    d = admin.post("/api/v1/machines/dpm/deprovision", json={"wipe": "quick"})
    assert d.status_code == 201, d.text
    return str(p.json()["id"]), str(d.json()["id"])


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
    for header in (
        "Bearer",
        "Basic abc",
        f"Token {api_sqlite.admin_token}",
        "Bearer " + "brz_" + "a" * 200,
    ):
        r = api_sqlite.client("").get("/api/v1/machines", headers={"Authorization": header})
        assert r.status_code == 401, header
