"""Console pages of what runs over time: operations, rollouts, and node operations through a
machine's agent."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Query, Request, Response

from server.errors import Invalid
from server.ui import views
from server.ui.render import (
    api,
    as_error,
    html,
    page_or_part,
    read_form,
    redirect,
    router,
    signed_in,
)
from server.ui.session import check_mutation

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
    session = await signed_in(request)
    if op not in NODE_OPS:
        raise Invalid(message="unknown node operation", details={"field": "op"})
    path = f"/api/v1/machines/{quote(key, safe='')}/node/{op}"
    params: dict[str, Any] = {"service": service, "tail_lines": tail or None}
    r = await api(request, session, "GET", path, params=params)
    result = r.body if r.ok else None
    return page_or_part(
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


# -- operations and rollouts ------------------------------------------------------------------


@router.get("/operations")
async def operations(
    request: Request,
    cursor: Annotated[str, Query(max_length=2048)] = "",
    part: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    session = await signed_in(request)
    r = await api(
        request, session, "GET", "/api/v1/operations", params={"cursor": cursor, "limit": 50}
    )
    items = r.body["items"] if r.ok else []
    return page_or_part(
        request,
        session,
        part,
        "operations",
        ops=[(op, views.progress(op)) for op in items],
        next_cursor=r.body.get("next_cursor") if r.ok else None,
        cursor=cursor,
        error=None if r.ok else r.error,
    )


@router.get("/operations/{op_id}")
async def operation(
    request: Request, op_id: str, part: Annotated[str | None, Query(max_length=32)] = None
) -> Response:
    session = await signed_in(request)
    r = await api(request, session, "GET", f"/api/v1/operations/{quote(op_id, safe='')}")
    if not r.ok:
        return html(request, "error.html", status=r.status, session=session, error=r.error)
    return page_or_part(
        request, session, part, "operation", op=r.body, progress=views.progress(r.body)
    )


@router.get("/rollouts")
async def rollouts(
    request: Request, part: Annotated[str | None, Query(max_length=32)] = None
) -> Response:
    session = await signed_in(request)
    r = await api(request, session, "GET", "/api/v1/upgrades", params={"limit": 100})
    return page_or_part(
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
    session = await signed_in(request)
    r = await api(request, session, "GET", f"/api/v1/upgrades/{quote(rollout_id, safe='')}")
    if not r.ok:
        return html(request, "error.html", status=r.status, session=session, error=r.error)
    return page_or_part(request, session, part, "rollout", r=r.body)


@router.post("/rollouts/{rollout_id}/{verb}")
async def rollout_control(request: Request, rollout_id: str, verb: str) -> Response:
    session = await signed_in(request)
    check_mutation(request, session, (await read_form(request)).one("csrf"))
    if verb not in ("pause", "resume", "abort"):
        raise Invalid(message="unknown rollout action", details={"field": "verb"})
    path = f"/api/v1/upgrades/{quote(rollout_id, safe='')}/{verb}"
    r = await api(request, session, "POST", path)
    if not r.ok:
        raise as_error(r)
    return redirect(f"/ui/rollouts/{quote(rollout_id, safe='')}")
