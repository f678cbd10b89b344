"""The console over HTTP against a real server (uvicorn; SQLite and PostgreSQL): sign-in and its
cookie, the security headers, CSRF and roles on every mutation, escaping of stored user data, the
selector box's inline errors, keyset paging, the ETag'd live parts and rollouts. The browser
tests (``test_console_browser.py``) prove the same things through chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.console import XSS, browser, csrf_of, store_label, token_of
from tests.support.metrics import get, scrape


@pytest.fixture
def srv(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    """On SQLite and on PostgreSQL, like every API test."""
    with run_server(tmp_path / "data", db_url) as s:
        yield s


def make(srv: RunningServer, name: str, mac: str, **labels: str) -> dict:
    r = srv.client().post(
        "/api/v1/machines", json={"name": name, "nics": [{"mac": mac}], "labels": labels}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_sign_in_cookie_headers_and_sign_out(srv: RunningServer) -> None:
    import httpx

    anon = httpx.Client(base_url=srv.url, follow_redirects=False)
    r = anon.get("/ui/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    r = anon.post("/ui/login", data={"token": "brz_" + "x" * 43})
    assert r.status_code == 401 and "token not accepted" in r.text
    assert "set-cookie" not in r.headers

    r = anon.post("/ui/login", data={"token": srv.admin_token})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("bronze_session=")
    for attr in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=43200"):
        assert attr in cookie, cookie
    page = anon.get("/ui/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert srv.admin_token not in page.text  # never in a page
    assert re.search(r"[?&]token=", page.text) is None
    # No inline script, no inline handlers or styles: only /ui/static scripts.
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts == ['<script src="/ui/static/console.js" defer>']
    assert re.search(r"\son[a-z]+\s*=", page.text) is None
    assert re.search(r"\sstyle\s*=", page.text) is None
    js = anon.get("/ui/static/console.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]

    # Sign-out needs the CSRF token too; after it the cookie is gone.
    r = anon.post("/ui/logout", data={"csrf": "0" * 64})
    assert "set-cookie" not in r.headers
    r = anon.post("/ui/logout", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303 and 'bronze_session=""' in r.headers["set-cookie"]
    assert anon.get("/ui/").status_code == 303


def test_revoked_token_is_signed_out_at_once(srv: RunningServer) -> None:
    tok = token_of(srv, "operator", "short-lived")
    c = browser(srv, tok)
    assert c.get("/ui/").status_code == 200
    assert srv.client().delete("/api/v1/tokens/short-lived").status_code in (200, 204)
    r = c.get("/ui/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert c.get("/ui/?part=rows").status_code == 401  # the live script then goes to sign-in


def test_reader_sees_no_buttons_and_every_mutation_is_refused(srv: RunningServer) -> None:
    m = make(srv, "r1", "02:00:00:00:31:01", rack="a")
    srv.client().patch(
        "/api/v1/machines/r1", json={"bmc": {"driver": "redfish", "address": "127.0.0.1:9"}}
    )
    reader = browser(srv, token_of(srv, "reader"))
    fleet = reader.get("/ui/").text
    page = reader.get("/ui/machines/r1").text
    assert 'data-machine="r1"' in fleet
    for html in (fleet, page):
        assert 'id="bulk-actions"' not in html and 'class="pick"' not in html
        assert 'id="power-buttons"' not in html and "power cycle" not in html
    csrf = csrf_of(page)  # the sign-out form's: valid for this session
    r = reader.post("/ui/machines/r1/power", data={"action": "cycle", "csrf": csrf})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = reader.post(
        "/ui/bulk", data={"machine": "r1", "do": "power", "action": "off", "csrf": csrf}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"

    operator = browser(srv, token_of(srv, "operator"))
    op_csrf = csrf_of(operator.get("/ui/machines/r1").text)
    forged = [
        {"action": "cycle"},  # no token
        {"action": "cycle", "csrf": "0" * 64},  # wrong token
        {"action": "cycle", "csrf": csrf},  # another session's token
    ]
    for data in forged:
        r = operator.post("/ui/machines/r1/power", data=data)
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf", data
    r = operator.post(
        "/ui/machines/r1/power",
        data={"action": "cycle", "csrf": op_csrf},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf"
    # Nothing was started by any of them.
    assert srv.client().get("/api/v1/operations").json()["items"] == []
    assert srv.client().get(f"/api/v1/machines/{m['id']}").json()["power"]["last_request"] is None


def test_stored_user_data_is_escaped(srv: RunningServer) -> None:
    r = srv.client().post(
        "/api/v1/machines",
        json={"name": "x1", "nics": [{"mac": "02:00:00:00:32:01"}], "labels": {"evil": XSS}},
    )
    assert r.status_code == 422  # the API refuses such a label value ...
    m = make(srv, "x1", "02:00:00:00:32:01")
    store_label(srv, m["id"], "evil", XSS)  # ... but whatever is stored must render inert
    srv.client().patch(
        "/api/v1/machines/x1", json={"serial": XSS, "hardware": {"cpu": "</pre><script>x()"}}
    )
    c = browser(srv, srv.admin_token)
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    for path in ("/ui/", "/ui/machines/x1", "/ui/?part=rows"):
        html = c.get(path).text
        assert escaped in html, path
        assert "<img" not in html and "<script>x()" not in html, path
    assert "&lt;/pre&gt;&lt;script&gt;x()" in c.get("/ui/machines/x1").text


def test_selector_errors_inline_counts_and_keyset_paging(srv: RunningServer) -> None:
    admin = srv.client()
    r = admin.post(
        "/api/v1/machines:import",
        json={
            "machines": [
                {
                    "name": f"p{i:03d}",
                    "nics": [{"mac": f"02:00:00:01:{i // 256:02x}:{i % 256:02x}"}],
                    "labels": {"rack": "r1" if i % 3 else "r2"},
                }
                for i in range(250)
            ]
        },
    )
    assert r.status_code in (200, 201), r.text
    c = browser(srv, srv.admin_token)
    bad = c.get("/ui/", params={"selector": "rack in (r1"})
    assert bad.status_code == 200
    assert re.search(r'id="selector-error">invalid selector', bad.text), bad.text[:2000]

    seen: list[str] = []
    params = {"selector": "rack=r1", "limit": "50"}
    first = c.get("/ui/", params=params).text
    assert re.search(r"166 machines matching", first)
    assert 'data-phase="registered"' in first and "registered <b>166</b>" in first
    html = first
    while True:
        seen += re.findall(r'<tr data-machine="([^"]+)"', html)
        nxt = re.search(r'href="([^"]+)" id="next-page"', html)
        if not nxt:
            break
        html = c.get(nxt.group(1).replace("&amp;", "&")).text
    expected = [f"p{i:03d}" for i in range(250) if i % 3]
    assert seen == expected  # every machine once, in name order, in pages of 50


def test_live_parts_answer_304_until_something_changes(srv: RunningServer) -> None:
    make(srv, "l1", "02:00:00:00:33:01")
    c = browser(srv, srv.admin_token)
    r = c.get("/ui/machines/l1", params={"part": "power"})
    assert r.status_code == 200 and "<html" not in r.text and "observed" in r.text
    etag = r.headers["etag"]
    again = c.get("/ui/machines/l1", params={"part": "power"}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    srv.client().patch("/api/v1/machines/l1", json={"labels": {"k": "v"}})
    rows = c.get("/ui/", params={"part": "rows"})
    assert rows.status_code == 200 and "<html" not in rows.text and 'class="lk">k<' in rows.text
    assert c.get("/ui/machines/l1", params={"part": "nope!"}).status_code == 422


def test_rollout_pages_and_controls(srv: RunningServer) -> None:
    import hashlib

    admin = srv.client()
    make(srv, "up-1", "02:00:00:00:34:01", slot="up")
    for phase in ("provisioning", "ready"):
        assert admin.patch("/api/v1/machines/up-1", json={"phase": phase}).status_code == 200
    kernel = b"kernel bytes"
    digest = hashlib.sha256(kernel).hexdigest()
    r = admin.put("/api/v1/assets/k1", params={"sha256": digest}, content=kernel)
    assert r.status_code == 201, r.text
    r = admin.post("/api/v1/images", json={"name": "img", "version": "1", "kernel": "k1"})
    assert r.status_code == 201, r.text
    r = admin.post(
        "/api/v1/upgrades", json={"image": "img", "selector": "slot=up", "preserve": True}
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    # Rollout progress in /metrics: one running rollout, its one machine counted by state.
    samples, _ = scrape(srv)
    assert get(samples, "bronze_rollouts", status="running") == 1
    mine = {
        dict(labels)["state"]: v
        for (name, labels), v in samples.items()
        if name == "bronze_rollout_machines" and dict(labels)["rollout"] == rid
    }
    assert sum(mine.values()) == 1, mine

    reader = browser(srv, token_of(srv, "reader"))
    listing = reader.get("/ui/rollouts").text
    assert f'href="/ui/rollouts/{rid}"' in listing and "slot=up" in listing
    detail = reader.get(f"/ui/rollouts/{rid}").text
    assert 'href="/ui/machines/up-1"' in detail and 'id="rollout-status"' in detail
    assert 'id="rollout-pause"' not in detail
    r = reader.post(f"/ui/rollouts/{rid}/pause", data={"csrf": csrf_of(detail)})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"

    operator = browser(srv, token_of(srv, "operator"))
    page = operator.get(f"/ui/rollouts/{rid}").text
    assert 'id="rollout-pause"' in page
    assert operator.post(f"/ui/rollouts/{rid}/pause", data={}).status_code == 403
    r = operator.post(f"/ui/rollouts/{rid}/pause", data={"csrf": csrf_of(page)})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/rollouts/{rid}"
    assert admin.get(f"/api/v1/upgrades/{rid}").json()["status"] == "paused"
    again = operator.post(f"/ui/rollouts/{rid}/resume", data={"csrf": csrf_of(page)})
    assert again.status_code == 303
    assert (
        operator.post(f"/ui/rollouts/{rid}/abort", data={"csrf": csrf_of(page)}).status_code == 303
    )
    wrong = operator.post(f"/ui/rollouts/{rid}/pause", data={"csrf": csrf_of(page)})
    assert wrong.status_code == 409  # the API's own refusal (aborting/aborted), passed on
    assert "cannot pause" in wrong.json()["error"]["message"]
    part = operator.get(f"/ui/rollouts/{rid}", params={"part": "detail"}).text
    assert re.search(r'id="rollout-status">abort', part), part
