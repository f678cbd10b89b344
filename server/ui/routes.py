"""The console's pages (``/ui/``): server-rendered Jinja2 with autoescaping, a little vanilla
script for live parts (``static/console.js``), and forms for every change.

Every page reads through the REST API in-process (:mod:`server.ui.api`) as the signed-in user.
A page with live parts answers ``?part=NAME`` with that part alone, with an ETag of its bytes:
the script polls it every two seconds with ``If-None-Match`` and swaps it in only on a change
(``304`` otherwise). Every POST checks the CSRF token and then the role
(:func:`server.ui.session.check_mutation`) before anything is done.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from server.agents.liveness import session_claimed
from server.errors import ApiError, Invalid
from server.inventory.machines import iso, selector_clause
from server.inventory.models import AgentState, Machine
from server.inventory.selectors import parse_param
from server.power.kinds import OperationKind
from server.types import Phase
from server.ui import views
from server.ui.api import ApiAnswer, call
from server.ui.session import (
    COOKIE,
    COOKIE_MAX_AGE,
    COOKIE_PATH,
    UiSession,
    check_mutation,
    current,
    principal_for,
    same_origin,
)

HERE = Path(__file__).parent
router = APIRouter(prefix="/ui", include_in_schema=False)

env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, ensure_ascii=False)
env.filters["q"] = lambda v: quote(str(v), safe="")

POWER_ACTIONS = ("on", "off", "soft-off", "cycle", "reset")
BOOT_DEVICES = ("pxe", "disk", "bios", "cdrom")
PAGE_SIZES = (50, 100, 200, 500)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send `Origin: null`
    "Cache-Control": "no-store",
}


class SignedOut(Exception):
    """No (valid) session: the page redirects to the sign-in form."""


def _html(request: Request, template: str, status: int = 200, **values: Any) -> Response:
    body = env.get_template(template).render(request=request, **values)
    return _respond(request, body, status)


def _respond(request: Request, body: str, status: int = 200) -> Response:
    etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'
    headers = dict(SECURITY_HEADERS) | {"ETag": etag}
    if status == 200 and request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return HTMLResponse(body, status_code=status, headers=headers)


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


async def _session(request: Request) -> UiSession:
    session = await current(request)
    if session is None:
        raise SignedOut()
    return session


async def _api(
    request: Request, session: UiSession, method: str, path: str, **kw: Any
) -> ApiAnswer:
    return await call(request.app, session.token, method, path, **kw)


def _part(
    request: Request, session: UiSession, name: str | None, page: str, **values: Any
) -> Response:
    """The whole page, or only the live part ``name`` (``parts/<page>_<name>.html``)."""
    values |= {"session": session, "can_operate": session.can_operate}
    if name:
        if not name.isidentifier():
            raise Invalid(message="unknown part", details={"field": "part"})
        return _html(request, f"parts/{page}_{name}.html", **values)
    return _html(request, f"{page}.html", **values)


# -- sign-in ----------------------------------------------------------------------------------


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _html(request, "login.html", error=None)


FORM_MAX = 64 << 10
"""Largest console form body (1,000 machine names fit easily)."""


class Form(dict[str, list[str]]):
    """An ``application/x-www-form-urlencoded`` body (the only kind the console's forms send;
    parsed here rather than with a multipart library)."""

    def one(self, name: str, limit: int = 256) -> str:
        values = self.get(name) or [""]
        return values[0][:limit]


async def _form(request: Request) -> Form:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Invalid(message="expected a form", details={"field": "content-type"})
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX:
            raise Invalid(message="form too large", details={"field": "body"})
    return Form(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))


@router.post("/login")
async def login(request: Request) -> Response:
    token = (await _form(request)).one("token").strip()
    if not same_origin(request):
        return _html(request, "login.html", status=403, error="request from another site")
    principal = await principal_for(request.app.state.ctx, token) if token else None
    if principal is None:
        return _html(request, "login.html", status=401, error="token not accepted")
    resp = _redirect("/ui/")
    resp.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await current(request)
    resp = _redirect("/ui/login")
    csrf = (await _form(request)).one("csrf")
    if session is not None and hmac.compare_digest(csrf.encode(), session.csrf.encode()):
        resp.delete_cookie(COOKIE, path=COOKIE_PATH)
    return resp


# -- fleet ------------------------------------------------------------------------------------


def _fleet_facts(
    request: Request, selector: str, ids: list[str]
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Counts by phase under the selector, and agent facts of this page's machines."""
    ctx = request.app.state.ctx
    reqs = parse_param(selector) if selector else ()
    hub = getattr(request.app.state.agent_api, "hub", None)
    with ctx.db.read() as s:
        counts = dict(
            s.execute(
                select(Machine.phase, func.count())
                .where(selector_clause(reqs))
                .group_by(Machine.phase)
            ).all()
        )
        agents: dict[str, dict[str, Any]] = {}
        if ids:
            for st in s.scalars(select(AgentState).where(AgentState.machine_id.in_(ids))):
                here = hub is not None and hub.is_connected(st.machine_id)
                agents[st.machine_id] = {
                    "connected": here
                    or session_claimed(
                        st.connected, st.last_seen, ctx.settings.agent_heartbeat_interval
                    ),
                    "last_seen": iso(st.last_seen),
                }
    return {p.value: counts.get(p.value, 0) for p in Phase}, agents


@router.get("/")
async def fleet(
    request: Request,
    selector: Annotated[str, Query(max_length=4096)] = "",
    phase: Annotated[str, Query(max_length=32)] = "",
    cursor: Annotated[str, Query(max_length=2048)] = "",
    limit: Annotated[int, Query()] = 100,
    part: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    session = await _session(request)
    limit = limit if limit in PAGE_SIZES else 100
    page = await _api(
        request,
        session,
        "GET",
        "/api/v1/machines",
        params={"selector": selector, "phase": phase, "cursor": cursor, "limit": limit},
    )
    error = None if page.ok else page.error
    items = page.body["items"] if page.ok else []
    counts: dict[str, int] = {}
    agents: dict[str, dict[str, Any]] = {}
    if page.ok:
        counts, agents = await run_in_threadpool(
            _fleet_facts, request, selector, [m["id"] for m in items]
        )
    return _part(
        request,
        session,
        part,
        "fleet",
        items=items,
        agents=agents,
        counts=counts,
        total=sum(counts.values()),
        selector=selector,
        phase=phase,
        cursor=cursor,
        limit=limit,
        page_sizes=PAGE_SIZES,
        next_cursor=page.body.get("next_cursor") if page.ok else None,
        error=error,
        phases=[p.value for p in Phase],
        power_actions=POWER_ACTIONS,
        boot_devices=BOOT_DEVICES,
    )


@router.post("/bulk")
async def bulk(request: Request) -> Response:
    """Selected machines -> one power or boot-device operation over all of them."""
    session = await _session(request)
    form = await _form(request)
    check_mutation(request, session, form.one("csrf"))
    names = form.get("machine", [])[:1000]
    if not names:
        raise Invalid(message="select at least one machine", details={"field": "machine"})
    what = form.one("do")
    if what == "power":
        action = form.one("action")
        if action not in POWER_ACTIONS:
            raise Invalid(message="unknown power action", details={"field": "action"})
        kind, params = OperationKind.POWER, {}
    elif what == "boot":
        action = form.one("device")
        if action not in BOOT_DEVICES:
            raise Invalid(message="unknown boot device", details={"field": "device"})
        kind = OperationKind.BOOT_DEVICE
        params = {"persistent": form.one("persistent") == "on", "uefi": form.one("uefi") == "on"}
    else:
        raise Invalid(message="nothing to do", details={"field": "do"})
    svc = request.app.state.power
    actor = session.principal.actor + " (console)"
    op_id = await run_in_threadpool(
        lambda: svc.submit(kind=kind, action=action, params=params, actor=actor, keys=names)
    )
    svc.start(op_id)
    return _redirect(f"/ui/operations/{quote(op_id, safe='')}")


# -- one machine ------------------------------------------------------------------------------


@router.get("/machines/{key}")
async def machine(
    request: Request, key: str, part: Annotated[str | None, Query(max_length=32)] = None
) -> Response:
    session = await _session(request)
    path = f"/api/v1/machines/{quote(key, safe='')}"
    m = await _api(request, session, "GET", path)
    if not m.ok:
        return _html(request, "error.html", status=m.status, session=session, error=m.error)
    name = quote(m.body["name"], safe="")
    base = f"/api/v1/machines/{name}"
    values: dict[str, Any] = {"m": m.body, "power_actions": POWER_ACTIONS}
    values["boot_devices"] = BOOT_DEVICES
    op_id = (m.body["power"].get("last_request") or {}).get("operation_id")
    values["op"] = None
    if op_id:
        op = await _api(request, session, "GET", f"/api/v1/operations/{quote(op_id, safe='')}")
        if op.ok:
            values["op"] = op.body
            values["op_progress"] = views.progress(op.body)
    if part in (None, "timeline", "agent", "events"):
        agent = await _api(request, session, "GET", f"{base}/agent")
        events = await _api(request, session, "GET", f"{base}/events", params={"limit": 100})
        tl = await _api(request, session, "GET", f"{base}/timeline")
        values["agent"] = agent.body if agent.ok else None
        values["events"] = events.body["items"] if events.ok else []
        values["timeline"] = views.timeline(
            tl.body["items"] if tl.ok else [], values["events"], values["agent"]
        )
    if part is None:
        cfg = await _api(request, session, "GET", f"{base}/config", params={"diff": "applied"})
        values["config"] = cfg.body if cfg.ok else None
        values["config_error"] = None if cfg.ok else cfg.error
    return _part(request, session, part, "machine", **values)


@router.post("/machines/{key}/power")
async def machine_power(request: Request, key: str) -> Response:
    session = await _session(request)
    form = await _form(request)
    check_mutation(request, session, form.one("csrf"))
    action = form.one("action", 32)
    path = f"/api/v1/machines/{quote(key, safe='')}/power"
    r = await _api(request, session, "POST", path, json={"action": action})
    if not r.ok:
        raise _as_error(r)
    return _redirect(f"/ui/machines/{quote(key, safe='')}")


@router.post("/machines/{key}/boot-device")
async def machine_boot_device(request: Request, key: str) -> Response:
    session = await _session(request)
    form = await _form(request)
    check_mutation(request, session, form.one("csrf"))
    body = {
        "device": form.one("device", 32),
        "persistent": form.one("persistent") == "on",
        "uefi": form.one("uefi") == "on",
    }
    path = f"/api/v1/machines/{quote(key, safe='')}/boot-device"
    r = await _api(request, session, "PUT", path, json=body)
    if not r.ok:
        raise _as_error(r)
    return _redirect(f"/ui/machines/{quote(key, safe='')}")


NODE_OPS = ("logs", "dmesg", "stats", "ps", "services")


@router.get("/machines/{key}/node")
async def machine_node(
    request: Request,
    key: str,
    op: Annotated[str, Query(max_length=16)] = "logs",
    service: Annotated[str, Query(max_length=128)] = "",
    tail: Annotated[int, Query(ge=0, le=10_000)] = 200,
    follow: Annotated[str, Query(max_length=8)] = "",
    part: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    """A node operation through the machine's agent (the API's ``/node/{op}``, reader role).
    "Follow" re-reads the last ``tail`` lines every two seconds (the live part), rather than
    holding the API's NDJSON stream open from the page."""
    session = await _session(request)
    if op not in NODE_OPS:
        raise Invalid(message="unknown node operation", details={"field": "op"})
    path = f"/api/v1/machines/{quote(key, safe='')}/node/{op}"
    params: dict[str, Any] = {"service": service, "tail_lines": tail or None}
    r = await _api(request, session, "GET", path, params=params)
    result = r.body if r.ok else None
    return _part(
        request,
        session,
        part,
        "node",
        key=key,
        op=op,
        service=service,
        tail=tail,
        follow=follow == "on",
        ops=NODE_OPS,
        result=result,
        error=None if r.ok else r.error,
    )


class _Relayed(ApiError):
    """The API's own refusal of a console mutation, passed on with its status and message."""

    code, template = "refused", "{message}"


def _as_error(r: ApiAnswer) -> ApiError:
    err = _Relayed(message=r.error)
    err.status = r.status  # type: ignore[misc]
    return err


# -- operations and rollouts ------------------------------------------------------------------


@router.get("/operations")
async def operations(
    request: Request,
    cursor: Annotated[str, Query(max_length=2048)] = "",
    part: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    session = await _session(request)
    r = await _api(
        request, session, "GET", "/api/v1/operations", params={"cursor": cursor, "limit": 50}
    )
    items = r.body["items"] if r.ok else []
    return _part(
        request,
        session,
        part,
        "operations",
        ops=[(op, views.progress(op)) for op in items],
        next_cursor=r.body.get("next_cursor") if r.ok else None,
        error=None if r.ok else r.error,
    )


@router.get("/operations/{op_id}")
async def operation(
    request: Request, op_id: str, part: Annotated[str | None, Query(max_length=32)] = None
) -> Response:
    session = await _session(request)
    r = await _api(request, session, "GET", f"/api/v1/operations/{quote(op_id, safe='')}")
    if not r.ok:
        return _html(request, "error.html", status=r.status, session=session, error=r.error)
    return _part(request, session, part, "operation", op=r.body, progress=views.progress(r.body))


@router.get("/rollouts")
async def rollouts(
    request: Request, part: Annotated[str | None, Query(max_length=32)] = None
) -> Response:
    session = await _session(request)
    r = await _api(request, session, "GET", "/api/v1/upgrades", params={"limit": 100})
    return _part(
        request,
        session,
        part,
        "rollouts",
        items=r.body["items"] if r.ok else [],
        error=None if r.ok else r.error,
    )


@router.get("/rollouts/{rollout_id}")
async def rollout(
    request: Request, rollout_id: str, part: Annotated[str | None, Query(max_length=32)] = None
) -> Response:
    session = await _session(request)
    r = await _api(request, session, "GET", f"/api/v1/upgrades/{quote(rollout_id, safe='')}")
    if not r.ok:
        return _html(request, "error.html", status=r.status, session=session, error=r.error)
    return _part(request, session, part, "rollout", r=r.body)


@router.post("/rollouts/{rollout_id}/{verb}")
async def rollout_control(request: Request, rollout_id: str, verb: str) -> Response:
    session = await _session(request)
    check_mutation(request, session, (await _form(request)).one("csrf"))
    if verb not in ("pause", "resume", "abort"):
        raise Invalid(message="unknown rollout action", details={"field": "verb"})
    path = f"/api/v1/upgrades/{quote(rollout_id, safe='')}/{verb}"
    r = await _api(request, session, "POST", path)
    if not r.ok:
        raise _as_error(r)
    return _redirect(f"/ui/rollouts/{quote(rollout_id, safe='')}")
