"""Console helpers: a signed-in browser-like client (cookie jar, no redirects followed), the
CSRF token of a page, tokens of each role, and direct database writes for data the API itself
refuses (to prove the console escapes whatever is stored)."""

from __future__ import annotations

import re
import uuid

import httpx
from sqlalchemy import insert

from server.inventory.models import MachineLabel
from tests.peers.apiserver import RunningServer

XSS = "<img src=x onerror=alert(1)>"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def token_of(srv: RunningServer, role: str, name: str | None = None) -> str:
    r = srv.client().post(
        "/api/v1/tokens", json={"name": name or f"{role}-{uuid.uuid4().hex[:6]}", "role": role}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def browser(srv: RunningServer, token: str) -> httpx.Client:
    """A client holding the console's session cookie for ``token`` (sign-in asserted)."""
    c = httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30)
    r = c.post("/ui/login", data={"token": token})
    assert r.status_code == 303 and r.headers["location"] == "/ui/", r.text
    return c


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def store_label(srv: RunningServer, machine_id: str, key: str, value: str) -> None:
    """A label written straight to the database (the API refuses such values)."""
    with srv.app.state.ctx.db.write() as s:
        s.execute(insert(MachineLabel).values(machine_id=machine_id, key=key, value=value))
