"""The console's pages (``/ui/``): server-rendered Jinja2 with autoescaping, a little vanilla
script for live parts (``static/console.js``), and forms for every change.

Every page reads through the REST API in-process (:mod:`server.ui.api`) as the signed-in user.
A page with live parts answers ``?part=NAME`` with that part alone, with an ETag of its bytes:
the script polls it every two seconds with ``If-None-Match`` and swaps it in only on a change
(``304`` otherwise). Every POST checks the CSRF token and then the role
(:func:`server.ui.session.check_mutation`) before anything is done.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Query, Request, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from server.agents.liveness import session_claimed
from server.errors import Invalid
from server.inventory.machines import iso, selector_clause
from server.inventory.models import AgentState, Machine
from server.inventory.selectors import parse_param
from server.power.kinds import OperationKind
from server.types import Phase
from server.ui import views
from server.ui.render import (
    BOOT_DEVICES,
    PAGE_SIZES,
    POWER_ACTIONS,
    api,
    as_error,
    html,
    page_or_part,
    read_form,
    redirect,
    router,
    signed_in,
)
from server.ui.session import (
    COOKIE,
    COOKIE_MAX_AGE,
    COOKIE_PATH,
    check_mutation,
    current,
    principal_for,
    same_origin,
)

# -- sign-in ----------------------------------------------------------------------------------


@router.get("/login")
async def login_form(request: Request) -> Response:
    return html(request, "login.html", error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    token = (await read_form(request)).one("token").strip()
    if not same_origin(request):
        return html(request, "login.html", status=403, error="request from another site")
    principal = await principal_for(request.app.state.ctx, token) if token else None
    if principal is None:
        return html(request, "login.html", status=401, error="token not accepted")
    resp = redirect("/ui/")
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
    resp = redirect("/ui/login")
    csrf = (await read_form(request)).one("csrf")
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
    session = await signed_in(request)
    limit = limit if limit in PAGE_SIZES else 100
    page = await api(
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
    return page_or_part(
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
    session = await signed_in(request)
    form = await read_form(request)
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
    actor = session.principal.actor
    op_id = await run_in_threadpool(
        lambda: svc.submit(kind=kind, action=action, params=params, actor=actor, keys=names)
    )
    svc.start(op_id)
    return redirect(f"/ui/operations/{quote(op_id, safe='')}")


# -- one machine ------------------------------------------------------------------------------


@router.get("/machines/{key}")
async def machine(
    request: Request, key: str, part: Annotated[str | None, Query(max_length=32)] = None
) -> Response:
    session = await signed_in(request)
    path = f"/api/v1/machines/{quote(key, safe='')}"
    m = await api(request, session, "GET", path)
    if not m.ok:
        return html(request, "error.html", status=m.status, session=session, error=m.error)
    name = quote(m.body["name"], safe="")
    base = f"/api/v1/machines/{name}"
    values: dict[str, Any] = {"m": m.body, "power_actions": POWER_ACTIONS}
    values["boot_devices"] = BOOT_DEVICES
    op_id = (m.body["power"].get("last_request") or {}).get("operation_id")
    values["op"] = None
    if op_id:
        op = await api(request, session, "GET", f"/api/v1/operations/{quote(op_id, safe='')}")
        if op.ok:
            values["op"] = op.body
            values["op_progress"] = views.progress(op.body)
    if part in (None, "timeline", "agent", "events"):
        agent = await api(request, session, "GET", f"{base}/agent")
        events = await api(request, session, "GET", f"{base}/events", params={"limit": 100})
        tl = await api(request, session, "GET", f"{base}/timeline")
        values["agent"] = agent.body if agent.ok else None
        values["events"] = events.body["items"] if events.ok else []
        values["timeline"] = views.timeline(
            tl.body["items"] if tl.ok else [], values["events"], values["agent"]
        )
    if part is None:
        cfg = await api(request, session, "GET", f"{base}/config", params={"diff": "applied"})
        values["config"] = cfg.body if cfg.ok else None
        values["config_error"] = None if cfg.ok else cfg.error
    return page_or_part(request, session, part, "machine", **values)


@router.post("/machines/{key}/power")
async def machine_power(request: Request, key: str) -> Response:
    session = await signed_in(request)
    form = await read_form(request)
    check_mutation(request, session, form.one("csrf"))
    action = form.one("action", 32)
    path = f"/api/v1/machines/{quote(key, safe='')}/power"
    r = await api(request, session, "POST", path, json={"action": action})
    if not r.ok:
        raise as_error(r)
    return redirect(f"/ui/machines/{quote(key, safe='')}")


@router.post("/machines/{key}/boot-device")
async def machine_boot_device(request: Request, key: str) -> Response:
    session = await signed_in(request)
    form = await read_form(request)
    check_mutation(request, session, form.one("csrf"))
    body = {
        "device": form.one("device", 32),
        "persistent": form.one("persistent") == "on",
        "uefi": form.one("uefi") == "on",
    }
    path = f"/api/v1/machines/{quote(key, safe='')}/boot-device"
    r = await api(request, session, "PUT", path, json=body)
    if not r.ok:
        raise as_error(r)
    return redirect(f"/ui/machines/{quote(key, safe='')}")
