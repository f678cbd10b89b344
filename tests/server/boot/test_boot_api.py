"""The boot plane's REST side against a real uvicorn server, on SQLite and PostgreSQL:
profiles (injection refused with the failing field), assets (sha256, hostile names, ranges),
/boot.ipxe decisions per phase, discovery and its rate limit, the decide contract through the
real pxe.HttpBackend, timeline ingestion and reads, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from pxe import Arch, BootDecision, BootQuery, HttpBackend
from server.agents import BootstrapTokens
from server.boot.timeline import Retention, prune
from server.inventory.models import BootProfile, Machine
from tests.peers.apiserver import RunningServer, run_server
from tests.support.boot import KERNEL, machine, profile, script, seed, sha, timeline, upload
from tests.support.procs import BRONZE
from tests.support.wait import eventually

# -- profiles ------------------------------------------------------------------------------------

INJECTIONS = [
    ({"args": ["a\nchain http://evil/x"]}, "args[0]", "newline"),
    ({"args": ["console=ttyS0;reboot"]}, "args[0]", "';'"),
    ({"args": ["x&&shell"]}, "args[0]", "'&&'"),
    ({"args": ["ok", "x||shell"]}, "args[1]", "'||'"),
    ({"args": ["x#comment"]}, "args[0]", "'#'"),
    ({"args": ["${evil}"]}, "args[0]", "'${'"),
    ({"args": ["${net0/ip}"]}, "args[0]", "'${'"),
    ({"args": ["two words"]}, "args[0]", "space"),
    ({"args": ["tab\there"]}, "args[0]", "tab"),
    ({"args": ['q"uote']}, "args[0]", "quote"),
    ({"args": ["back`tick`"]}, "args[0]", "backtick"),
    ({"args": ["cr\rx"]}, "args[0]", "carriage return"),
    ({"args": ["caf\u00e9"]}, "args[0]", "non-ASCII"),
    ({"args": ["bell\x07"]}, "args[0]", "control"),
    ({"kernel": "vmlinuz;reboot"}, "kernel", None),
    ({"kernel": "http://x/k\nshell"}, "kernel", "newline"),
    ({"kernel": "../etc/passwd"}, "kernel", None),
    ({"initrds": ["initrd.img", "http://x/i i"]}, "initrds[1]", "space"),
    ({"kernel": "missing-asset"}, "kernel", "not found"),
    ({"selector": "role in (a"}, "selector", None),
]


def test_profiles_crud_and_injection_refused(api: RunningServer) -> None:
    c = api.client()
    seed(c)
    base = {
        "name": "p1",
        "kernel": "vmlinuz",
        "initrds": ["initrd.img"],
        "args": ["console=ttyS0", "bronze.mac=${mac}"],
        "selector": "role=worker",
    }
    for change, field, reason in INJECTIONS:
        r = c.post("/api/v1/profiles", json={**base, **change})
        assert r.status_code == 422, (change, r.text)
        err = r.json()["error"]
        assert err["details"]["field"] == field, (change, err)
        if reason:
            assert reason in err["message"], (change, err)
    assert c.post("/api/v1/profiles", json={**base, "name": "Bad Name"}).status_code == 422
    assert c.get("/api/v1/profiles").json() == []

    r = c.post("/api/v1/profiles", json=base)
    assert r.status_code == 201, r.text
    assert c.post("/api/v1/profiles", json=base).status_code == 409
    assert c.get("/api/v1/profiles/p1").json()["args"] == base["args"]
    r = c.put("/api/v1/profiles/p1", json={**base, "args": ["x;y"]} | {"name": None})
    assert r.status_code == 422  # name is not part of a replacement body
    r = c.put("/api/v1/profiles/p1", json={"kernel": "http://10.0.0.1/k", "args": ["quiet"]})
    assert r.status_code == 200 and r.json()["kernel"] == "http://10.0.0.1/k", r.text
    assert c.put("/api/v1/profiles/p1", json={"kernel": "k", "args": ["a||b"]}).status_code == 422
    assert c.get("/api/v1/profiles/p1").json()["args"] == ["quiet"]
    # An asset used by a profile cannot be deleted.
    assert c.put("/api/v1/profiles/p1", json={"kernel": "vmlinuz"}).status_code == 200
    r = c.delete("/api/v1/assets/vmlinuz")
    assert r.status_code == 409 and "p1" in r.json()["error"]["message"]
    assert c.delete("/api/v1/profiles/p1").status_code == 200
    assert c.get("/api/v1/profiles/p1").status_code == 404
    assert c.delete("/api/v1/assets/vmlinuz").status_code == 200
    assert not (api.settings.data_dir / "assets" / "vmlinuz").exists()
    kinds = [e["kind"] for e in c.get("/api/v1/events", params={"kind": "boot"}).json()["items"]]
    assert "boot.profile.created" in kinds and "boot.asset.deleted" in kinds


# -- assets --------------------------------------------------------------------------------------


def test_asset_upload_verifies_sha256_and_keeps_nothing_on_mismatch(api: RunningServer) -> None:
    c = api.client()
    r = upload(c, "vmlinuz", KERNEL, digest=sha(b"something else"))
    assert r.status_code == 422 and r.json()["error"]["details"] == {"field": "sha256"}
    assets_dir = api.settings.data_dir / "assets"
    assert c.get("/api/v1/assets").json() == []
    assert list(assets_dir.iterdir()) == []  # no temp file left either
    assert c.get("/assets/vmlinuz").status_code == 404
    for bad in ("abc", "A" * 64, "g" * 64):
        assert (
            c.put("/api/v1/assets/vmlinuz", params={"sha256": bad}, content=b"x").status_code == 422
        )
    assert upload(c, "vmlinuz", KERNEL).status_code == 201
    listed = c.get("/api/v1/assets").json()
    assert listed[0]["name"] == "vmlinuz" and listed[0]["size"] == len(KERNEL)
    assert listed[0]["sha256"] == sha(KERNEL)
    assert (assets_dir / "vmlinuz").read_bytes() == KERNEL
    # Replacing keeps serving the old bytes until the new ones are verified.
    assert upload(c, "vmlinuz", b"new", digest=sha(b"other")).status_code == 422
    assert c.get("/assets/vmlinuz").content == KERNEL
    assert upload(c, "vmlinuz", b"new").status_code == 201
    assert c.get("/assets/vmlinuz").content == b"new"
    assert c.get("/api/v1/assets/vmlinuz").json()["size"] == 3


def test_asset_too_large_is_413(tmp_path: Path, sqlite_url: str) -> None:
    with run_server(tmp_path / "data", sqlite_url, boot_asset_max_bytes=1000) as srv:
        c = srv.client()
        body = os.urandom(1001)
        r = upload(c, "big", body)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

        def chunks() -> Any:  # no Content-Length: the limit is enforced while streaming
            yield body[:600]
            yield body[600:]

        r = c.put("/api/v1/assets/big", params={"sha256": sha(body)}, content=chunks())
        assert r.status_code == 413
        assert c.get("/api/v1/assets").json() == []
        assert list((srv.settings.data_dir / "assets").iterdir()) == []


HOSTILE_PATHS = [
    "..",
    ".hidden",
    "-x",
    "a..b",
    "%2e%2e",
    "..%2fsecret",
    "%2e%2e%2fsecret",
    "x%00y",
    "sp%20ace",
    "caf%C3%A9",
    "semi;colon",
]


def test_asset_name_with_a_trailing_newline_is_422(api: RunningServer) -> None:
    """Issue 10.9: ``vmlinuz\n`` passed the name check (``$`` matches before a final newline)."""
    c = api.client()
    r = c.put("/api/v1/assets/vmlinuz%0A", params={"sha256": sha(b"x")}, content=b"x")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"] == {"field": "name"}
    assert c.get("/api/v1/assets").json() == []
    assert not any((api.settings.data_dir / "assets").glob("vmlinuz*"))
    r = c.post("/api/v1/profiles", json={"name": "p", "kernel": "vmlinuz\n"})
    assert r.status_code == 422, r.text


def test_hostile_asset_names_refused(api: RunningServer) -> None:
    c = api.client()
    anon = api.client("")
    (api.settings.data_dir / "secret").write_text("SECRET")
    for name in HOSTILE_PATHS:
        r = c.put(f"/api/v1/assets/{name}", params={"sha256": sha(b"x")}, content=b"x")
        assert r.status_code in (404, 422), (name, r.status_code)
        for path in (f"/assets/{name}", f"/assets/../{name}"):
            r = anon.get(path)
            assert r.status_code in (404, 422), (path, r.status_code)
            assert b"SECRET" not in r.content
    for path in ("/assets/..%2f..%2fsecret", "/assets/%2e%2e/secret", "/assets//etc/passwd"):
        r = anon.get(path)
        assert r.status_code in (404, 422) and b"SECRET" not in r.content, path
    assert c.get("/api/v1/assets").json() == []
    # A symlink planted in the assets directory is not followed, even with a database row.
    seed(c)
    link = api.settings.data_dir / "assets" / "initrd.img"
    link.unlink()
    link.symlink_to(api.settings.data_dir / "secret")
    r = anon.get("/assets/initrd.img")
    assert r.status_code == 404 and b"SECRET" not in r.content


def test_asset_ranges(api: RunningServer) -> None:
    c = api.client()
    seed(c)
    anon = api.client("")
    n = len(KERNEL)
    cases = [
        (None, 200, KERNEL, None),
        ("bytes=0-0", 206, KERNEL[:1], f"bytes 0-0/{n}"),
        ("bytes=100-199", 206, KERNEL[100:200], f"bytes 100-199/{n}"),
        (f"bytes={n - 1}-", 206, KERNEL[-1:], f"bytes {n - 1}-{n - 1}/{n}"),
        (f"bytes=10-{n * 2}", 206, KERNEL[10:], f"bytes 10-{n - 1}/{n}"),
        ("bytes=-500", 206, KERNEL[-500:], f"bytes {n - 500}-{n - 1}/{n}"),
        (f"bytes=-{n * 3}", 206, KERNEL, f"bytes 0-{n - 1}/{n}"),
        ("bytes=5-1", 200, KERNEL, None),  # invalid: ignored
        ("bytes=0-1,4-5", 200, KERNEL, None),  # several: ignored
        ("lines=1-2", 200, KERNEL, None),
    ]
    for header, status, body, content_range in cases:
        r = anon.get("/assets/vmlinuz", headers={"Range": header} if header else {})
        assert r.status_code == status, (header, r.status_code)
        assert r.content == body, header
        assert r.headers.get("content-range") == content_range, header
        assert r.headers["accept-ranges"] == "bytes"
        assert int(r.headers["content-length"]) == len(body)
    for header in (f"bytes={n}-", f"bytes={n + 10}-{n + 20}", "bytes=-0"):
        r = anon.get("/assets/vmlinuz", headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{n}"
        assert r.json()["error"]["code"] == "range_not_satisfiable"
    r = anon.head("/assets/vmlinuz")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == str(n)
    # Large (multi-chunk) full download is byte-exact.
    big = os.urandom(3 * 256 * 1024 + 17)
    assert upload(c, "big.bin", big).status_code == 201
    assert anon.get("/assets/big.bin").content == big
    r = anon.get("/assets/big.bin", headers={"Range": f"bytes=262140-{262140 + 300000}"})
    assert r.status_code == 206 and r.content == big[262140 : 262140 + 300001]


# -- /boot.ipxe ----------------------------------------------------------------------------------


def test_boot_script_per_phase(api: RunningServer) -> None:
    c = api.client()
    seed(c)
    profile(c, "generic")
    profile(c, "workers", "role=worker")
    profile(c, "r1-workers", "role=worker,rack in (r1,r2)")
    machine(c, "w1", "52:54:00:00:01:01", role="worker", rack="r1")
    machine(c, "w2", "52:54:00:00:01:02", role="worker")
    machine(c, "s1", "52:54:00:00:01:03", role="storage")
    machine(c, "prov", "52:54:00:00:01:04", phase="provisioning", role="worker", rack="r2")
    machine(c, "ready", "52:54:00:00:01:05", phase="ready", role="worker")
    machine(c, "maint", "52:54:00:00:01:06", phase="maintenance", role="worker")
    machine(c, "failed", "52:54:00:00:01:07", phase="failed", role="worker")

    def profile_of(text: str) -> str | None:
        for word in text.split():
            if word.startswith("bronze.profile="):
                return word.split("=", 1)[1]
        return None

    expect = {
        "52:54:00:00:01:01": "r1-workers",
        "52:54:00:00:01:02": "workers",
        "52:54:00:00:01:03": "generic",
        "52:54:00:00:01:04": "r1-workers",
    }
    for mac, name in expect.items():
        r = script(api, mac.upper().replace(":", "-"), arch="bios")  # any MAC spelling
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
        assert r.headers["cache-control"] == "no-store"
        assert profile_of(r.text) == name, (mac, r.text)
        assert r.text.startswith("#!ipxe\n")
        base = "http://127.0.0.1:8080"
        assert f"kernel --name kernel {base}/assets/vmlinuz console=ttyS0" in r.text
        assert f"initrd --name initrd0 {base}/assets/initrd.img" in r.text
        assert "bronze.token=" not in r.text  # not an agent profile: no secret at all
    assert "sanboot --no-describe --drive 0x80" in script(api, "52:54:00:00:01:05").text
    for mac in ("52:54:00:00:01:06", "52:54:00:00:01:07", "52:54:00:00:99:99"):
        text = script(api, mac).text
        assert "exit" in text and "kernel" not in text and "sanboot" not in text, (mac, text)
    # Unknown MAC without a discovery profile: nothing recorded.
    assert c.get("/api/v1/machines", params={"phase": "discovered"}).json()["items"] == []
    # A machine with no matching profile gets exit, and the timeline says why.
    c.delete("/api/v1/profiles/generic")
    assert "exit" in script(api, "52:54:00:00:01:03").text
    steps = eventually(
        lambda: [
            e
            for e in timeline(c, "52:54:00:00:01:03")
            if e["detail"].get("reason") == "no_profiles_match"
            or e["detail"].get("reason") == "no_profile_matches"
        ]
    )
    assert steps[-1]["kind"] == "SCRIPT" and steps[-1]["detail"]["action"] == "none"
    # Bad query values: precise 422, never a script.
    for q in (
        {"mac": "zz"},
        {"mac": "52:54:00:00:01:01", "uuid": "nope"},
        {"mac": "52:54:00:00:01:01", "arch": "sparc"},
        {},
    ):
        r = api.client("").get("/boot.ipxe", params=q)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid", q


def test_unsafe_value_in_database_is_refused_at_render(api: RunningServer) -> None:
    c = api.client()
    seed(c)
    profile(c, "workers", "role=worker")
    machine(c, "w1", "52:54:00:00:02:01", role="worker")
    canary = "x;chain${evil}"
    with api.app.state.ctx.db.write() as s:  # reached the database around the API
        s.execute(update(BootProfile).values(args=["console=ttyS0", canary]))
    r = script(api, "52:54:00:00:02:01")
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "unsafe_profile" and err["details"] == {
        "profile": "workers",
        "field": "args[1]",
    }
    assert canary not in r.text and "chain" not in r.text
    assert c.get("/healthz").status_code == 200


def dhcp_ack(c: httpx.Client, mac: str, boot: str, yiaddr: str = "127.0.0.1") -> None:
    """What a remote ``bronze pxe`` reports when DHCP hands ``mac`` its script URL."""
    file = f"http://127.0.0.1:8080/boot.ipxe?mac={mac}&arch=bios&boot={boot}"
    event = {
        "kind": "ACK",
        "mac": mac,
        "detail": {"yiaddr": yiaddr, "file": file},
        "at": time.time(),
    }
    assert c.post("/api/v1/boot/timeline", json={"events": [event]}).status_code == 202


def from_address(api: RunningServer, ip: str) -> httpx.Client:
    """An unauthenticated client whose connections come from ``ip`` (127.0.0.x on loopback)."""
    transport = httpx.HTTPTransport(local_address=ip)
    return httpx.Client(base_url=api.url, transport=transport, timeout=30)


def token_of(text: str) -> str | None:
    words = [w.split("=", 1)[1] for w in text.split() if w.startswith("bronze.token=")]
    assert len(words) <= 1
    return words[0] if words else None


def test_discovery_agent_profile_and_enrollment_token(api: RunningServer) -> None:
    c = api.client()
    seed(c)
    profile(c, "discovery", agent=True, args=["console=ttyS0", "bronze.server_http=${server}"])
    boot = api.client(c.post("/api/v1/tokens", json={"name": "r", "role": "boot"}).json()["token"])
    mac, uuid = "52:54:00:00:03:01", "4c4c4544-0042-3510-8052-b4c04f4e3032"
    dhcp_ack(boot, mac, "0000abcd")
    r = script(api, mac, uuid=uuid.upper(), arch="uefi-x64", boot="0000abcd")
    assert r.status_code == 200, r.text
    listed = c.get("/api/v1/machines", params={"phase": "discovered"}).json()["items"]
    assert [(m["name"], m["uuid"], m["nics"][0]["mac"]) for m in listed] == [
        ("discovered-525400000301", uuid, mac)
    ]
    mid = listed[0]["id"]
    args = dict(w.split("=", 1) for w in r.text.split("\n")[1].split()[3:] if "=" in w)
    assert args["bronze.machine"] == mid
    assert args["bronze.server_http"] == "http://127.0.0.1:8080"
    assert args["bronze.server"].endswith(f":{api.settings.agent_session_port}")
    token = args["bronze.token"]
    assert token not in json.dumps(c.get(f"/api/v1/machines/{mid}").json())
    # A second fetch for the same boot gets the same token (it does not revoke the first).
    assert token_of(script(api, mac, boot="0000abcd").text) == token
    # A new boot (a new DHCP transaction) replaces it.
    dhcp_ack(boot, mac, "0000abce")
    second = token_of(script(api, mac, boot="0000abce").text)
    assert second is not None and second != token
    tokens: BootstrapTokens = api.app.state.agent_tokens
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(Exception, match="enrollment denied"):
            loop.run_until_complete(tokens.redeem(mid, token, peer="127.0.0.1"))  # superseded
        with pytest.raises(Exception, match="enrollment denied"):
            loop.run_until_complete(tokens.redeem(mid, second, peer="127.0.0.2"))  # other address
        loop.run_until_complete(tokens.redeem(mid, second, peer="127.0.0.1"))
        with pytest.raises(Exception, match="enrollment denied"):
            loop.run_until_complete(tokens.redeem(mid, second, peer="127.0.0.1"))  # used once
    finally:
        loop.close()
    steps = eventually(
        lambda: [e["kind"] for e in timeline(c, mac)].count("SCRIPT") == 3 and timeline(c, mac)
    )
    assert [e["kind"] for e in steps if e["kind"] != "ACK"] == [
        "DISCOVERED",
        "SCRIPT",
        "SCRIPT",
        "SCRIPT",
    ]
    assert token not in json.dumps(steps) and second not in json.dumps(steps)
    events = c.get("/api/v1/events", params={"kind": "machine.discovered"}).json()["items"]
    assert len(events) == 1 and events[0]["actor"] == "boot:discovery"


def test_enrollment_token_only_for_the_address_dhcp_gave(api: RunningServer) -> None:
    """Issue 10.1: anyone on the boot network could fetch a machine's token (and each fetch
    revoked the real machine's). Now another address gets the script without a token and the
    real machine's token survives; without a DHCP record or reservation nobody gets one."""
    c = api.client()
    seed(c)
    profile(c, "discovery", agent=True)
    boot = api.client(c.post("/api/v1/tokens", json={"name": "r", "role": "boot"}).json()["token"])
    mac = "52:54:00:00:03:02"
    thief = from_address(api, "127.0.0.2")
    r = thief.get("/boot.ipxe", params={"mac": mac})
    assert r.status_code == 200 and "bronze.token=" not in r.text  # nothing recorded for the MAC
    assert token_of(script(api, mac).text) is None  # nor for the right address
    dhcp_ack(boot, mac, "00001111")
    for params in ({"mac": mac}, {"mac": mac, "boot": "00001111"}):
        r = thief.get("/boot.ipxe", params=params)
        assert r.status_code == 200 and "bronze.token=" not in r.text
        assert "kernel" in r.text  # the script itself is not secret
    real = token_of(script(api, mac, boot="00001111").text)
    assert real is not None
    assert thief.get("/boot.ipxe", params={"mac": mac}).status_code == 200
    assert token_of(script(api, mac, boot="00002222").text) is None  # not the recorded boot
    assert token_of(script(api, mac, boot="00001111").text) == real  # still the same token
    assert script(api, mac, boot="xyz").status_code == 422
    # A script request that arrives before DHCP's report of its boot (a remote bronze pxe posts
    # it a moment later) waits for that report instead of going without a token.
    plane = api.app.state.boot_plane
    with ThreadPoolExecutor(1) as pool:
        early = pool.submit(script, api, mac, boot="00003333")
        eventually(lambda: mac in plane.seen._waiters)
        dhcp_ack(boot, mac, "00003333")
        fresh = token_of(early.result().text)
    assert fresh is not None and fresh != real
    reasons = eventually(
        lambda: (
            {e["detail"].get("reason") for e in timeline(c, mac) if e["kind"] == "SCRIPT"}
            >= {"token_address_mismatch", "token_no_known_address", "token_boot_mismatch"}
        )
    )
    assert reasons


def test_discovery_rate_limit_and_cap(tmp_path: Path, db_url: str) -> None:
    with run_server(tmp_path / "data", db_url, boot_discovery_rate=3, boot_discovery_max=5) as srv:
        c = srv.client()
        seed(c)
        profile(c, "discovery", agent=True)
        texts = [script(srv, f"02:aa:00:00:00:{i:02x}").text for i in range(12)]
        assert sum("kernel" in t for t in texts) == 3
        assert all("exit" in t for t in texts[3:])
        found = c.get("/api/v1/machines", params={"phase": "discovered"}).json()["items"]
        assert len(found) == 3
        # The same MAC again is not a new machine, and still boots discovery.
        assert "kernel" in script(srv, "02:aa:00:00:00:00").text
        steps = eventually(
            lambda: [e for e in timeline(c, "02:aa:00:00:00:0b") if e["kind"] == "SCRIPT"]
        )
        assert steps[0]["detail"]["reason"] == "discovery_rate_limited"
        # The cap on discovered machines holds even when the rate would allow more.
        with srv.app.state.ctx.db.write() as s:
            s.execute(update(Machine).values(created_at=datetime.now(UTC) - timedelta(hours=1)))
        texts = [script(srv, f"02:bb:00:00:00:{i:02x}").text for i in range(4)]
        assert sum("kernel" in t for t in texts) == 2
        assert len(c.get("/api/v1/machines", params={"phase": "discovered"}).json()["items"]) == 5
    # Discovery off (same database and data dir; the discovery profile still exists): exit.
    with run_server(tmp_path / "data", db_url, boot_discovery=False) as srv:
        c = srv.client()
        assert "exit" in script(srv, "02:cc:00:00:00:01").text
        assert len(c.get("/api/v1/machines", params={"phase": "discovered"}).json()["items"]) == 5


# -- decide (role boot) through the real HttpBackend ---------------------------------------------


def test_decide_contract_with_http_backend(api: RunningServer) -> None:
    c = api.client()
    boot_token = c.post("/api/v1/tokens", json={"name": "rack1", "role": "boot"}).json()["token"]
    machine(c, "w1", "52:54:00:00:04:01", role="worker")
    machine(c, "m1", "52:54:00:00:04:02", phase="maintenance")

    async def ask(token: str, mac: str) -> BootDecision:
        backend = HttpBackend(api.url, token)
        try:
            return await backend.decide(
                BootQuery(
                    mac=mac,
                    arch=Arch.UEFI_X64,
                    ipxe=True,
                    uuid="4c4c4544-0042-3510-8052-b4c04f4e3032",
                )
            )
        finally:
            await backend.aclose()

    run = asyncio.run
    assert run(ask(boot_token, "52:54:00:00:04:01")) == BootDecision(True, True, None, "w1")
    assert run(ask(boot_token, "52:54:00:00:04:02")) == BootDecision(True, False, None, "m1")
    assert run(ask(boot_token, "52:54:00:00:04:99")) == BootDecision()  # 404
    # Discovery on (a discovery profile exists): unknown MACs may boot.
    seed(c)
    profile(c, "discovery", agent=True)
    assert run(ask(boot_token, "52:54:00:00:04:99")) == BootDecision(False, True)
    # The boot token can do nothing else; readers cannot ask.
    b = api.client(boot_token)
    assert b.get("/api/v1/machines").status_code == 403
    assert b.get("/api/v1/boot/timeline", params={"mac": "52:54:00:00:04:01"}).status_code == 403
    reader = c.post("/api/v1/tokens", json={"name": "r", "role": "reader"}).json()["token"]
    r = api.client(reader).get("/api/v1/boot/decide", params={"mac": "52:54:00:00:04:01"})
    assert r.status_code == 403
    r = b.get("/api/v1/boot/decide", params={"mac": "nope"})
    assert r.status_code == 422 and r.json()["error"]["details"] == {"field": "mac"}


def test_reserved_nic_address_is_the_dhcp_answer(api: RunningServer) -> None:
    c = api.client()
    boot_token = c.post("/api/v1/tokens", json={"name": "rack1", "role": "boot"}).json()["token"]
    r = c.post(
        "/api/v1/machines",
        json={
            "name": "w1",
            "labels": {"role": "worker"},
            "nics": [
                {"mac": "52:54:00:00:05:01", "ip": "10.20.0.11"},
                {"mac": "52:54:00:00:05:02"},
            ],
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["nics"] == [
        {"mac": "52:54:00:00:05:01", "name": None, "ip": "10.20.0.11"},
        {"mac": "52:54:00:00:05:02", "name": None, "ip": None},
    ]
    b = api.client(boot_token)
    got = b.get(
        "/api/v1/boot/decide", params={"mac": "52:54:00:00:05:01", "arch": "bios", "ipxe": "false"}
    )
    assert got.status_code == 200 and got.json()["static_ip"] == "10.20.0.11", got.text
    got = b.get(
        "/api/v1/boot/decide", params={"mac": "52:54:00:00:05:02", "arch": "bios", "ipxe": "false"}
    )
    assert got.json()["static_ip"] is None  # that NIC takes a pool address
    # One address, one NIC, across the fleet (409 naming the field) and within a body (422).
    r = c.post(
        "/api/v1/machines",
        json={"name": "w2", "nics": [{"mac": "52:54:00:00:05:03", "ip": "10.20.0.11"}]},
    )
    assert r.status_code == 409, r.text
    details = r.json()["error"]["details"]
    assert details["field"] == "ip" and details["machine"]["name"] == "w1", details
    r = c.post(
        "/api/v1/machines",
        json={
            "name": "w2",
            "nics": [
                {"mac": "52:54:00:00:05:03", "ip": "10.20.0.12"},
                {"mac": "52:54:00:00:05:04", "ip": "10.20.0.12"},
            ],
        },
    )
    assert r.status_code == 422, r.text
    for bad in ("10.20.0", "224.0.0.1", "0.0.0.0", "127.0.0.1", "10.20.0.12\nX", 12):
        r = c.post(
            "/api/v1/machines",
            json={"name": "w3", "nics": [{"mac": "52:54:00:00:05:05", "ip": bad}]},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid", (bad, r.text)
    # A reservation moves with a PATCH of the NIC list.
    r = c.patch(
        "/api/v1/machines/w1", json={"nics": [{"mac": "52:54:00:00:05:01", "ip": "10.20.0.21"}]}
    )
    assert r.status_code == 200 and r.json()["nics"][0]["ip"] == "10.20.0.21", r.text
    got = b.get(
        "/api/v1/boot/decide", params={"mac": "52:54:00:00:05:01", "arch": "bios", "ipxe": "false"}
    )
    assert got.json()["static_ip"] == "10.20.0.21"


# -- timeline --------------------------------------------------------------------------------------


def test_timeline_ingestion_and_reads(api: RunningServer, tmp_path: Path) -> None:
    c = api.client()
    boot_token = c.post("/api/v1/tokens", json={"name": "rack1", "role": "boot"}).json()["token"]
    b = api.client(boot_token)
    mac = "52:54:00:00:05:01"
    machine(c, "n1", mac)
    now = time.time()
    events = [
        {"kind": "DISCOVER", "mac": mac, "detail": {"arch": "bios", "port4011": False}, "at": now},
        {"kind": "OFFER", "mac": mac.upper(), "detail": {"yiaddr": "10.0.0.5"}, "at": now + 0.1},
        {
            "kind": "TFTP_COMPLETE",
            "mac": mac,
            "client": "10.0.0.5:2070",
            "detail": {"file": "undionly.kpxe", "bytes": 70000},
            "at": now + 0.2,
        },
    ]
    r = b.post("/api/v1/boot/timeline", json={"events": events})
    assert r.status_code == 202 and r.json() == {"accepted": 3, "dropped": 0}
    items = eventually(lambda: len(timeline(c, mac)) == 3 and timeline(c, mac))
    assert [e["kind"] for e in items] == ["DISCOVER", "OFFER", "TFTP_COMPLETE"]
    assert {e["source"] for e in items} == {"pxe:rack1"}
    assert items[2]["detail"]["bytes"] == 70000 and items[2]["client"] == "10.0.0.5:2070"
    mt = c.get("/api/v1/machines/n1/timeline").json()
    assert mt["machine"] == "n1" and [e["id"] for e in mt["items"]] == [e["id"] for e in items]
    assert c.get("/api/v1/machines/nope/timeline").status_code == 404
    bad = [
        {"events": [{"kind": "SCRIPT", "mac": mac, "at": now}]},  # server-side kinds only from us
        {"events": [{"kind": "DISCOVER", "mac": "zz", "at": now}]},
        {"events": [{"kind": "DISCOVER", "mac": mac, "at": -1}]},
        {"events": [{"kind": "DISCOVER", "mac": mac, "at": now, "detail": {"x": "y" * 3000}}]},
        {"events": [{"kind": "DISCOVER", "mac": mac, "at": now, "client": "a b"}]},
        {"events": [{"kind": "DISCOVER", "mac": mac, "at": now}] * 1001},
        {"events": [{"kind": "DISCOVER", "mac": mac, "at": now, "extra": 1}]},
    ]
    for body in bad:
        assert b.post("/api/v1/boot/timeline", json=body).status_code == 422
    # CLI: table and JSON, by name and by MAC.
    tok = tmp_path / "t"
    tok.write_text(api.admin_token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env.update(
        {
            "BRONZE_URL": api.url,
            "BRONZE_TOKEN_FILE": str(tok),
            "COLUMNS": "200",
            "BRONZE_CONFIG": str(tmp_path / "none.toml"),
        }
    )
    out = subprocess.run(
        [BRONZE, "machines", "timeline", "n1"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "STEP" in out.stdout and "TFTP_COMPLETE" in out.stdout and "bytes=70000" in out.stdout
    out = subprocess.run(
        [BRONZE, "machines", "timeline", mac.replace(":", "-"), "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert [e["kind"] for e in json.loads(out.stdout)] == ["DISCOVER", "OFFER", "TFTP_COMPLETE"]


def test_timeline_retention(api: RunningServer) -> None:
    c = api.client()
    boot_token = c.post("/api/v1/tokens", json={"name": "rack1", "role": "boot"}).json()["token"]
    b = api.client(boot_token)
    now = time.time()
    old = now - 30 * 86400
    batch = [
        {"kind": "DISCOVER", "mac": "02:00:00:00:06:01", "at": now - 1 + i * 0.001}
        for i in range(40)
    ]
    batch += [{"kind": "DISCOVER", "mac": "02:00:00:00:06:02", "at": old}]
    assert b.post("/api/v1/boot/timeline", json={"events": batch}).json()["accepted"] == 41
    eventually(lambda: len(timeline(c, "02:00:00:00:06:01")) == 40)
    db = api.app.state.ctx.db
    with db.write() as s:
        prune(
            s,
            Retention(per_mac=10, days=7, max_rows=10_000),
            {"02:00:00:00:06:01"},
            datetime.now(UTC),
        )
    kept = timeline(c, "02:00:00:00:06:01")
    assert len(kept) == 10 and kept[-1]["at"] > kept[0]["at"]  # the newest ten
    assert timeline(c, "02:00:00:00:06:02") == []  # older than 7 days
    with db.write() as s:
        prune(s, Retention(per_mac=10, days=7, max_rows=3), set(), datetime.now(UTC))
    assert len(timeline(c, "02:00:00:00:06:01")) <= 3


def test_pxe_command_refuses_token_in_argv(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    r = subprocess.run(
        [BRONZE, "pxe", "--server", "http://127.0.0.1:9", "--token", "brz_secret"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1 and "never taken from argv" in r.stderr
    r = subprocess.run(
        [BRONZE, "pxe", "--server", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1 and "no token" in r.stderr
