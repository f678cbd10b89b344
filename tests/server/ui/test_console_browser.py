"""The console in a real browser: Playwright for Python driving Debian's chromium
(``/usr/bin/chromium``, installed by ``scripts/install-system-deps.sh``; never a downloaded
build). Against a real server, a real Redfish BMC (sushy-emulator) and crafted network-boot
traffic on loopback. Screenshots go to ``test-artifacts/console/`` (git-ignored; set
``BRONZE_TEST_ARTIFACTS`` to move them).

A browser that cannot start fails the test with the reason, like every other peer."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.peers import bmc_peers as peers
from tests.peers.apiserver import RunningServer, run_server
from tests.support.bmc import FAST_SERVER, bmc_body, start_peer
from tests.support.boot import machine, profile, seed
from tests.support.console import XSS, boot_traffic, pxe_settings, store_label, token_of
from tests.support.paths import ROOT
from tests.support.ports import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("BRONZE_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "console"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run scripts/install-system-deps.sh (Debian's chromium)")
    with sync_playwright() as p:
        # --no-sandbox: the suite runs as root, where chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.console_errors = errors  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


def shot(pg: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


def sign_in(pg: Page, srv: RunningServer, token: str) -> None:
    pg.goto(f"{srv.url}/ui/")
    expect(pg).to_have_url(f"{srv.url}/ui/login")
    pg.fill("#token", token)
    pg.click("#sign-in")
    expect(pg).to_have_url(f"{srv.url}/ui/")
    # The token is in an HttpOnly cookie: page script cannot see it, and no page contains it.
    assert pg.evaluate("document.cookie") == ""
    assert token not in pg.content()
    cookie = next(c for c in pg.context.cookies() if c["name"] == "bronze_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"


@pytest.fixture
def lab(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data", sqlite_url, pxe_settings=pxe_settings(tmp_path), **FAST_SERVER
    ) as srv:
        yield srv


def test_sign_in_filter_and_power_cycle_a_redfish_machine(
    lab: RunningServer, page: Page, tmp_path: Path
) -> None:
    peer = start_peer("sushy-tls", tmp_path / "sushy")  # TLS + basic auth: a password to hide
    assert peer.password
    try:
        c = lab.client()
        for name, rack, mac in (("node-1", "r1", "02:00:00:00:40:01"), ("node-2", "r2", "x")):
            body: dict[str, Any] = {"name": name, "labels": {"rack": rack}}
            body["nics"] = [{"mac": mac if mac != "x" else "02:00:00:00:40:02"}]
            if name == "node-1":
                body["bmc"] = bmc_body(peer)
            assert c.post("/api/v1/machines", json=body).status_code == 201
        sign_in(page, lab, lab.admin_token)
        expect(page.locator("#machines tbody tr")).to_have_count(2)
        expect(page.locator("#phase-counts")).to_contain_text("2 machines")

        page.fill("#selector", "rack in (r1")
        page.click("#filter")
        expect(page.locator("#selector-error")).to_contain_text("invalid selector")
        page.fill("#selector", "rack=r1")
        page.click("#filter")
        expect(page.locator("#machines tbody tr")).to_have_count(1)
        expect(page.locator("#machines tbody tr").first).to_have_attribute("data-machine", "node-1")
        expect(page.locator("#phase-counts")).to_contain_text("1 machine matching")
        shot(page, "fleet-filtered")

        page.click("text=node-1")
        expect(page.locator("#machine-name")).to_contain_text("node-1")
        bmc = page.inner_text("#bmc")
        assert "set (never shown)" in bmc and peer.password not in page.content()
        page.click("#power-on")
        expect(page.locator("#operation-status")).to_have_attribute(
            "data-status", "succeeded", timeout=WAIT_MS
        )
        assert peers.reference_power(peer) == "on"
        page.on("dialog", lambda d: d.accept())  # "power cycle node-1?"
        page.click("#power-cycle")
        expect(page.locator("#operation")).to_contain_text("cycle")
        # Live: the status moves to succeeded without a reload (the part is polled with ETags).
        expect(page.locator("#operation-status")).to_have_attribute(
            "data-status", "succeeded", timeout=WAIT_MS
        )
        expect(page.locator("#power-state")).to_contain_text("on")
        assert peers.reference_power(peer) == "on"
        shot(page, "machine-power-cycled")

        page.click("text=Operations")
        expect(page.locator("#operations tbody tr")).to_have_count(2)
        expect(page.locator("#operations tbody tr").first).to_contain_text("succeeded")
        ops = c.get("/api/v1/operations").json()["items"]
        assert [(o["action"], o["status"]) for o in ops] == [
            ("cycle", "succeeded"),
            ("on", "succeeded"),
        ]
        assert ops[0]["requested_by"] == "token:bootstrap-admin"
        assert page.console_errors == []  # type: ignore[attr-defined]
    finally:
        peer.stop()


def test_bulk_power_from_the_fleet_page(lab: RunningServer, page: Page, tmp_path: Path) -> None:
    peer = start_peer("sushy", tmp_path / "sushy")
    try:
        c = lab.client()
        body = {"name": "b1", "nics": [{"mac": "02:00:00:00:41:01"}], "bmc": bmc_body(peer)}
        assert c.post("/api/v1/machines", json=body).status_code == 201
        body = {"name": "b2", "nics": [{"mac": "02:00:00:00:41:02"}]}
        assert c.post("/api/v1/machines", json=body).status_code == 201
        sign_in(page, lab, lab.admin_token)
        page.check('input.pick[value="b1"]')
        page.select_option("#bulk-action", "on")
        page.on("dialog", lambda d: d.accept())
        page.click("#bulk-power")
        expect(page.locator("#operation-status")).to_have_attribute(
            "data-status", "succeeded", timeout=WAIT_MS
        )
        expect(page.locator("#operation-items tbody tr")).to_have_count(1)
        assert peers.reference_power(peer) == "on"
    finally:
        peer.stop()


def test_reader_sees_no_buttons_and_a_forged_post_is_refused(
    lab: RunningServer, page: Page, chromium: Browser
) -> None:
    c = lab.client()
    body = {"name": "f1", "nics": [{"mac": "02:00:00:00:42:01"}]}
    body["bmc"] = {"driver": "redfish", "address": "127.0.0.1:9"}
    assert c.post("/api/v1/machines", json=body).status_code == 201

    sign_in(page, lab, token_of(lab, "reader"))
    expect(page.locator("#machines tbody tr")).to_have_count(1)
    assert page.locator("#bulk-actions").count() == 0
    assert page.locator("input.pick").count() == 0
    page.goto(f"{lab.url}/ui/machines/f1")
    expect(page.locator("#machine-name")).to_contain_text("f1")
    assert page.locator("#power-buttons").count() == 0
    assert page.locator("button", has_text="power").count() == 0
    shot(page, "reader-machine")
    # The server refuses anyway: the reader's own session and CSRF token, posted from its page.
    status = page.evaluate(
        """async () => {
            const csrf = document.querySelector('input[name=csrf]').value;
            const r = await fetch('/ui/machines/f1/power', {method: 'POST',
                headers: {'content-type': 'application/x-www-form-urlencoded'},
                body: 'action=cycle&csrf=' + csrf});
            return [r.status, (await r.json()).error.code];
        }"""
    )
    assert status == [403, "forbidden"]

    # An operator signed in, lured to another site's page that posts a form to the console:
    # refused for want of the CSRF token, nothing started.
    operator = chromium.new_context()
    try:
        op_page = operator.new_page()
        sign_in(op_page, lab, token_of(lab, "operator"))
        evil = _evil_site(lab.url)
        try:
            responses: list[int] = []
            op_page.on(
                "response",
                lambda r: responses.append(r.status) if "/ui/machines/f1/power" in r.url else None,
            )
            op_page.goto(evil.url)
            op_page.wait_for_url("**/ui/machines/f1/power", timeout=WAIT_MS)
            assert responses == [403]
            assert '"csrf"' in op_page.content()
        finally:
            evil.stop()
    finally:
        operator.close()
    assert c.get("/api/v1/operations").json()["items"] == []


class _Site:
    def __init__(self, server: http.server.ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread
        self.url = f"http://127.0.0.1:{server.server_address[1]}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _evil_site(target: str) -> _Site:
    """Another origin (127.0.0.1, another port) whose page auto-submits a power form."""
    html = (
        "<html><body><form id=f method=post action='" + target + "/ui/machines/f1/power'>"
        "<input name=action value=cycle></form>"
        "<script>document.getElementById('f').submit()</script></body></html>"
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return _Site(server, thread)


def test_xss_label_renders_as_text(lab: RunningServer, page: Page) -> None:
    c = lab.client()
    r = c.post("/api/v1/machines", json={"name": "x1", "nics": [{"mac": "02:00:00:00:43:01"}]})
    assert r.status_code == 201
    store_label(lab, r.json()["id"], "note", XSS)
    c.patch("/api/v1/machines/x1", json={"serial": XSS})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(page, lab, lab.admin_token)
    label = page.locator('tr[data-machine="x1"] .lv')
    expect(label).to_have_text(XSS)
    assert page.locator("#machines img").count() == 0
    # A change makes the live part swap in newly rendered rows: they are inert too.
    assert c.patch("/api/v1/machines/x1", json={"labels": {"k2": "v2"}}).status_code == 200
    expect(page.locator('tr[data-machine="x1"] .labels')).to_contain_text("k2=v2", timeout=WAIT_MS)
    expect(page.locator('tr[data-machine="x1"] .lv').nth(1)).to_have_text(XSS)  # k2, note
    assert page.locator("#machines img").count() == 0
    page.goto(f"{lab.url}/ui/machines/x1")
    expect(page.locator("#labels")).to_contain_text(XSS)
    expect(page.locator("#details")).to_contain_text(XSS)
    assert page.locator("main img").count() == 0
    assert dialogs == []
    shot(page, "xss-inert")


def test_machine_timeline_after_crafted_boot_traffic(
    lab: RunningServer, page: Page, tmp_path: Path
) -> None:
    c = lab.client()
    seed(c)
    profile(c, "generic")
    mac = "52:54:00:44:00:01"
    machine(c, "pxe-1", mac, phase="provisioning")
    sign_in(page, lab, lab.admin_token)
    page.goto(f"{lab.url}/ui/machines/pxe-1")
    # Before any traffic: only the lifecycle (the move to provisioning).
    expect(page.locator("#last-step")).to_have_text("phase / upgrade: phase provisioning")
    assert page.locator('svg#timeline g.mark[data-lane="dhcp"]').count() == 0

    boot_traffic(lab, mac, tmp_path)
    # Drawn without a reload, on the lanes of each stage.
    svg = page.locator("svg#timeline")
    expect(svg).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#last-step")).to_contain_text("INITRD", timeout=WAIT_MS)
    for lane in ("dhcp", "tftp", "http", "lifecycle"):  # lifecycle: phase provisioning
        assert svg.locator(f'g.mark[data-lane="{lane}"]').count() >= 1, lane
    steps = page.inner_text("#timeline-steps")
    assert "discover" in steps and "offer" in steps
    assert "COMPLETE undionly.kpxe (2,000 B)" in steps
    assert "script: boot" in steps or "script:" in steps
    assert "KERNEL (300,000 B)" in steps and "INITRD (70,001 B)" in steps
    shot(page, "machine-timeline")
