"""Boot-plane REST helpers shared by the boot and timestamp tests: stand-in kernel/initrd
uploads (random bytes; the server checks their sha256, never their contents) and profiles."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx

from tests.peers.apiserver import RunningServer

KERNEL = os.urandom(300_000)
INITRD = os.urandom(70_001)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def upload(c: httpx.Client, name: str, body: bytes, digest: str | None = None) -> httpx.Response:
    return c.put(f"/api/v1/assets/{name}", params={"sha256": digest or sha(body)}, content=body)


def seed(c: httpx.Client) -> None:
    """Upload ``vmlinuz`` and ``initrd.img`` (201 asserted)."""
    assert upload(c, "vmlinuz", KERNEL).status_code == 201
    assert upload(c, "initrd.img", INITRD).status_code == 201


def profile(
    c: httpx.Client,
    name: str,
    selector: str = "",
    agent: bool = False,
    args: list[str] | None = None,
) -> None:
    """Create boot profile ``name`` booting the seeded kernel and initrd (201 asserted)."""
    r = c.post(
        "/api/v1/profiles",
        json={
            "name": name,
            "selector": selector,
            "kernel": "vmlinuz",
            "initrds": ["initrd.img"],
            "args": args if args is not None else ["console=ttyS0", f"bronze.profile={name}"],
            "agent": agent,
        },
    )
    assert r.status_code == 201, r.text


def timeline(c: httpx.Client, mac: str) -> list[dict[str, Any]]:
    r = c.get("/api/v1/boot/timeline", params={"mac": mac})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def machine(c: httpx.Client, name: str, mac: str, phase: str = "registered", **labels: str) -> None:
    r = c.post("/api/v1/machines", json={"name": name, "nics": [{"mac": mac}], "labels": labels})
    assert r.status_code == 201, r.text
    # A machine fails while provisioning: registered -> failed is not in the lifecycle.
    path = ["provisioning", "failed"] if phase == "failed" else [phase]
    for step in path if phase != "registered" else []:
        assert c.patch(f"/api/v1/machines/{name}", json={"phase": step}).status_code == 200


def script(api: RunningServer, mac: str, **q: str) -> httpx.Response:
    return api.client("").get("/boot.ipxe", params={"mac": mac, **q})
