"""/api/v1/images against a real server on SQLite and PostgreSQL: frozen checksums, signatures,
trusted keys, in-use refusal."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.image_manifest import public_key_text
from tests.peers.apiserver import RunningServer, run_server

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


@pytest.fixture
def signed_api(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    with run_server(tmp_path / "data", db_url, image_trusted_keys=[public_key_text(KEY)]) as srv:
        yield srv


def upload(c: httpx.Client, name: str, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    r = c.put(f"/api/v1/assets/{name}", params={"sha256": sha}, content=data)
    assert r.status_code in (200, 201), r.text
    return sha


def sign_remote(c: httpx.Client, name: str, key: Ed25519PrivateKey) -> str:
    import base64

    canonical = c.get(f"/api/v1/images/{name}/manifest").json()["canonical"]
    return base64.b64encode(key.sign(canonical.encode())).decode()


def test_image_freezes_checksums_and_is_listed(api: RunningServer) -> None:
    c = api.client()
    k = upload(c, "vmlinuz-1", b"kernel one")
    i = upload(c, "initrd-1", b"initrd one")
    r = c.post(
        "/api/v1/images",
        json={
            "name": "node-os-1",
            "version": "1.0.0",
            "kernel": "vmlinuz-1",
            "initrds": ["initrd-1"],
            "args": ["console=ttyS0"],
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kernel"] == {"asset": "vmlinuz-1", "sha256": k}
    assert body["initrds"] == [{"asset": "initrd-1", "sha256": i}]
    assert body["signed"] is False and len(body["digest"]) == 64
    canonical = c.get("/api/v1/images/node-os-1/manifest").json()
    assert hashlib.sha256(canonical["canonical"].encode()).hexdigest() == body["digest"]
    listed = c.get("/api/v1/images").json()
    assert [x["name"] for x in listed["items"]] == ["node-os-1"]
    assert listed["next_cursor"] is None
    dup = c.post(
        "/api/v1/images", json={"name": "node-os-1", "version": "2", "kernel": "vmlinuz-1"}
    )
    assert dup.status_code == 409
    kinds = [e["kind"] for e in c.get("/api/v1/events").json()["items"]]
    assert "image.created" in kinds


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "version": "1", "kernel": "missing"}, "kernel"),
        ({"name": "x", "version": "1", "kernel": "k", "initrds": ["nope"]}, "initrds[0]"),
        ({"name": "x\n", "version": "1", "kernel": "k"}, "name"),
        ({"name": "x", "version": "1\n", "kernel": "k"}, "version"),
        ({"name": "x", "version": "1", "kernel": "k", "args": ["a b"]}, "args"),
        ({"name": "x", "version": "1", "kernel": "../k"}, "kernel"),
        ({"name": "x", "version": "1", "kernel": "k", "extra": 1}, "extra"),
    ],
    ids=[
        "missing kernel asset",
        "missing initrd",
        "newline name",
        "newline version",
        "space in arg",
        "path kernel",
        "unknown field",
    ],
)
def test_bad_images_are_422(api_sqlite: RunningServer, body: dict[str, object], field: str) -> None:
    c = api_sqlite.client()
    upload(c, "k", b"k")
    r = c.post("/api/v1/images", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert c.get("/api/v1/images").json()["items"] == []


def test_signatures_against_trusted_keys(signed_api: RunningServer) -> None:
    c = signed_api.client()
    upload(c, "k", b"kernel")
    assert (
        c.post("/api/v1/images", json={"name": "a", "version": "1", "kernel": "k"}).status_code
        == 201
    )
    bad = c.put("/api/v1/images/a/signature", json={"signature": sign_remote(c, "a", OTHER)})
    assert bad.status_code == 422
    assert "does not verify against any of the 1 trusted key" in bad.json()["error"]["message"]
    assert c.get("/api/v1/images/a").json()["signed"] is False
    good = c.put("/api/v1/images/a/signature", json={"signature": sign_remote(c, "a", KEY)})
    assert good.status_code == 200, good.text
    assert good.json()["signed"] is True and len(good.json()["signed_by"]) == 16
    # A signature given at creation is checked the same way.
    r = c.post(
        "/api/v1/images",
        json={"name": "b", "version": "1", "kernel": "k", "signature": "A" * 88},
    )
    assert r.status_code == 422
    assert c.get("/api/v1/images/b").status_code == 404


def test_signature_without_trusted_keys_is_refused(api_sqlite: RunningServer) -> None:
    c = api_sqlite.client()
    upload(c, "k", b"kernel")
    c.post("/api/v1/images", json={"name": "a", "version": "1", "kernel": "k"})
    r = c.put("/api/v1/images/a/signature", json={"signature": sign_remote(c, "a", KEY)})
    assert r.status_code == 422 and "no trusted keys" in r.json()["error"]["message"]


def test_image_in_use_cannot_be_deleted(api: RunningServer) -> None:
    c = api.client()
    upload(c, "k", b"kernel")
    c.post("/api/v1/images", json={"name": "os", "version": "1", "kernel": "k"})
    c.post("/api/v1/machines", json={"name": "m1", "nics": [{"mac": "02:00:00:00:00:01"}]})
    from sqlalchemy import create_engine, text

    engine = create_engine(api.settings.effective_database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE machines SET image = 'os' WHERE name = 'm1'"))
    engine.dispose()
    r = c.delete("/api/v1/images/os")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["details"]["in_use"] == {"machines": ["m1"]}
    assert c.delete("/api/v1/machines/m1").status_code == 204
    assert c.delete("/api/v1/images/os").status_code == 200
    assert c.get("/api/v1/images/os").status_code == 404


def test_a_profile_can_boot_an_image(api_sqlite: RunningServer) -> None:
    from tests.support.boot import machine, script

    c = api_sqlite.client()
    upload(c, "vmlinuz-os", b"kernel os")
    upload(c, "initrd-os", b"initrd os")
    r = c.post(
        "/api/v1/images",
        json={
            "name": "os",
            "version": "1",
            "kernel": "vmlinuz-os",
            "initrds": ["initrd-os"],
            "args": ["console=ttyS0"],
        },
    )
    assert r.status_code == 201, r.text
    r = c.post("/api/v1/profiles", json={"name": "img", "image": "os", "args": ["quiet"]})
    assert r.status_code == 201, r.text
    assert r.json()["image"] == "os" and r.json()["kernel"] is None
    machine(c, "n1", "52:54:00:00:0c:01", phase="provisioning")
    text = script(api_sqlite, "52:54:00:00:0c:01", arch="bios").text
    assert "/assets/vmlinuz-os console=ttyS0 quiet" in text, text
    assert "/assets/initrd-os" in text
    for body, field in (
        ({"name": "x", "image": "os", "kernel": "vmlinuz-os"}, "exactly one"),
        ({"name": "x"}, "exactly one"),
        ({"name": "x", "image": "nope"}, "image 'nope' not found"),
        ({"name": "x", "image": "os", "initrds": ["initrd-os"]}, "brings its own"),
    ):
        bad = c.post("/api/v1/profiles", json=body)
        assert bad.status_code == 422 and field in bad.json()["error"]["message"], bad.text
    held = c.delete("/api/v1/images/os")
    assert held.status_code == 409 and held.json()["error"]["details"]["in_use"] == {
        "profiles": ["img"]
    }


def test_an_unsigned_image_cannot_back_a_profile_under_trusted_keys(
    signed_api: RunningServer,
) -> None:
    c = signed_api.client()
    upload(c, "k", b"kernel")
    c.post("/api/v1/images", json={"name": "u", "version": "1", "kernel": "k"})
    r = c.post("/api/v1/profiles", json={"name": "p", "image": "u"})
    assert r.status_code == 422 and "not signed by a trusted key" in r.text


def test_a_machine_config_naming_an_unsigned_or_missing_image_is_refused(
    signed_api: RunningServer,
) -> None:
    """``install.image`` in a config patch: 422 naming the field when the image is unsigned
    under trusted keys or missing; a signed one is taken."""
    c = signed_api.client()
    upload(c, "k", b"kernel")
    assert c.post("/api/v1/images", json={"name": "u", "version": "1", "kernel": "k"}).is_success
    patch = {"name": "inst", "scope": "fleet", "patch": {"install": {"disk": "/dev/vda"}}}
    for image, why in (("u", "not signed by a trusted key"), ("nope", "not found")):
        patch["patch"] = {"install": {"disk": "/dev/vda", "image": image}}
        r = c.post("/api/v1/config-patches", json=patch)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["field"] == "patch.install.image" and why in r.text
    assert c.get("/api/v1/config-patches").json() == []
    sig = sign_remote(c, "u", KEY)
    assert c.put("/api/v1/images/u/signature", json={"signature": sig}).is_success
    patch["patch"] = {"install": {"disk": "/dev/vda", "image": "u"}}
    r = c.post("/api/v1/config-patches", json=patch)
    assert r.status_code == 201, r.text
