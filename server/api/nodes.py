"""Commands and diagnostics through a machine's agent: reboot and node ops over REST.

* ``POST /api/v1/machines/{key}/reboot``: saved as a pending command (kept until the agent
  confirms, even across restarts) and sent by whichever replica holds the session.
* ``GET /api/v1/machines/{key}/node/{op}``: dmesg, logs, stats, ps, services. Node ops stream
  back to the caller, so only the replica holding the agent's session serves them; another
  replica forwards the request there (``BRONZE_API_ADVERTISE_URL``, saved with the session) and
  relays the answer, or answers 409 ``agent_on_other_replica`` if it cannot.

``?follow=true`` (logs, dmesg) streams **NDJSON** over a chunked HTTP response: one
``{"data": "..."}`` line per chunk the agent sends, and a last ``{"error": {...}}`` line if the
agent goes away. Plain HTTP rather than a WebSocket or SSE: the same bearer token and error
format as every other endpoint, readable with curl and httpx, and one JSON object per line
carries both data and a final error. When the client disconnects, Starlette cancels the
response; the hub then sends ``CancelNodeOp`` so the agent stops reading the file.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from server.agents import (
    AgentApiError,
    AgentApiServer,
    AgentDisconnected,
    AgentNotConnected,
    CommandTimeout,
    NodeOpKind,
)
from server.agents.liveness import session_claimed
from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.errors import AgentNeverConnected, AgentOnOtherReplica, AgentUnavailable, Invalid
from server.inventory import machines as inventory
from server.inventory.machines import iso
from server.inventory.models import AgentState
from server.types import EventKind

router = APIRouter(tags=["agents"])


def _ever_had_agent(ctx: Context, machine_id: str) -> bool:
    with ctx.db.read() as s:
        st = s.get(AgentState, machine_id)
        return st is not None and (st.cert_serial is not None or st.hello_at is not None)


def agent_api(request: Request) -> AgentApiServer:
    api: AgentApiServer | None = request.app.state.agent_api
    if api is None:
        raise AgentUnavailable(message="the agent API is not running (disabled or failed to start)")
    return api


def _machine_id(ctx: Context, key: str) -> str:
    with ctx.db.read() as s:
        return inventory.get_machine(s, key).id


def _holder(ctx: Context, machine_id: str) -> tuple[str | None, str] | None:
    """When the database says another replica holds the session: its REST URL (if it
    advertises one) and a message for the caller."""
    with ctx.db.read() as s:
        st = s.get(AgentState, machine_id)
        hb = ctx.settings.agent_heartbeat_interval
        if st is None or not session_claimed(st.connected, st.last_seen, hb):
            return None
        return st.replica_url, (
            f"the agent of machine {machine_id} holds its session with another bronze replica "
            f"(last seen {iso(st.last_seen) or 'unknown'})"
        )


async def _live_session(request: Request, ctx: Context, machine_id: str) -> AgentApiServer | str:
    """The agent API when this replica holds the machine's session; the URL of the replica that
    holds it, to forward the request to; or a 409 saying why neither."""
    api: AgentApiServer | None = request.app.state.agent_api
    if api is not None and api.hub.is_connected(machine_id):
        return api
    holder = await run_in_threadpool(_holder, ctx, machine_id)
    if holder is not None:
        url, message = holder
        if not url:
            why = "it advertises no URL (BRONZE_API_ADVERTISE_URL)"
        elif url == ctx.settings.effective_advertise_url:
            why = "its session with this replica is just ending"
        elif FORWARDED in request.headers:
            why = f"this request was already forwarded once (to {url})"
        else:
            return url
        raise AgentOnOtherReplica(
            message=f"{message}; node operations are served only by that replica and {why}: "
            "call it directly or retry",
            details={"machine_id": machine_id},
        )
    if api is None:
        agent_api(request)  # raises: the agent API is not running here
    raise AgentNotConnected(machine_id)


FORWARDED = "x-bronze-forwarded"
"""Set on a request one replica forwards to another: it is never forwarded again."""


async def _forward(request: Request, base: str, machine_id: str) -> StreamingResponse:
    """Relay the node op to the replica holding the session (the caller's token goes along and
    is checked there again); its answer, streamed or not, comes back as it is."""
    url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers = {FORWARDED: "1"}
    if "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
    try:
        resp = await client.send(client.build_request("GET", url, headers=headers), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        raise AgentOnOtherReplica(
            message=f"the agent of machine {machine_id} holds its session with the replica at "
            f"{base}, which did not answer: {type(exc).__name__}",
            details={"machine_id": machine_id},
        ) from None

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()
            await client.aclose()

    return StreamingResponse(
        body(),
        status_code=resp.status_code,
        media_type=resp.headers.get("content-type"),
        headers={"Cache-Control": "no-store", "X-Bronze-Replica": base},
    )


@router.post("/api/v1/machines/{key}/reboot", status_code=202)
async def machine_reboot(
    key: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    """Ask the agent to reboot (queued and kept until the agent confirms, even across restarts)."""
    mid = await run_in_threadpool(_machine_id, ctx, key)
    api = agent_api(request)
    here = api.hub.is_connected(mid)  # before: the agent may be gone (rebooting) right after
    if not here and not await run_in_threadpool(_ever_had_agent, ctx, mid):
        raise AgentNeverConnected(machine=key, command="reboot", details={"machine_id": mid})
    command_id = await api.hub.reboot(mid)

    def audit() -> None:
        with ctx.db.write() as s:
            inventory.record(
                s,
                actor=who.actor,
                kind=EventKind.AGENT_REBOOT,
                machine_id=mid,
                message="reboot requested through the agent",
                data={"command_id": command_id},
            )

    await run_in_threadpool(audit)
    return {
        "machine_id": mid,
        "command_id": command_id,
        "connected": here,
        "delivery": "sent" if here else "queued",
    }


@router.get("/api/v1/machines/{key}/node/{op}")
async def machine_node_op(
    key: str,
    op: NodeOpKind,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    service: Annotated[str, Query(max_length=128)] = "",
    tail_lines: Annotated[int, Query(ge=0, le=100_000)] = 0,
    timeout: Annotated[float, Query(gt=0, le=120)] = 30.0,
    follow: bool = False,
) -> Any:
    """A read-only diagnostic from the node (dmesg, logs, stats, ps, services). ``follow``
    (logs, dmesg): an NDJSON stream of ``{"data": ...}`` lines until the client disconnects;
    a last ``{"error": ...}`` line if the agent goes away."""
    mid = await run_in_threadpool(_machine_id, ctx, key)
    api = await _live_session(request, ctx, mid)
    if isinstance(api, str):
        return await _forward(request, api, mid)
    if follow:
        if op not in (NodeOpKind.LOGS, NodeOpKind.DMESG):
            raise Invalid(
                message="follow is only possible for logs and dmesg", details={"field": "follow"}
            )
        return await _follow(api, mid, op, service, tail_lines, timeout)
    res = await api.hub.node_op(mid, op, service=service, tail_lines=tail_lines, timeout=timeout)
    out: dict[str, Any] = {
        "machine_id": mid,
        "op": op.value,
        "ok": res.ok,
        "error": res.error or None,
        "output": res.output.decode("utf-8", "replace"),
    }
    if op is NodeOpKind.STATS and res.ok:
        try:
            out["data"] = json.loads(res.output)
        except ValueError:
            pass
    return out


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


async def _follow(
    api: AgentApiServer, mid: str, op: NodeOpKind, service: str, tail_lines: int, timeout: float
) -> StreamingResponse:
    """Start the follow and wait for its first chunk, so a refusal (no such log, invalid service,
    no answer) is still a plain JSON error; then stream."""
    stream = api.hub.node_op_stream(
        mid, op, service=service, tail_lines=tail_lines, timeout=timeout, follow=True
    )
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""
    except (AgentNotConnected, CommandTimeout):
        raise  # their own status: 409, 502 (disconnected), 504
    except AgentApiError as exc:  # the agent refused (e.g. no such log)
        await stream.aclose()
        raise Invalid(message=str(exc), details={"op": op.value, "service": service}) from None

    async def body() -> AsyncIterator[bytes]:
        # aclosing: when Starlette cancels us (client gone), the hub's stream is closed too,
        # which sends CancelNodeOp to the agent.
        async with aclosing(stream):
            if first:
                yield _line({"data": first.decode("utf-8", "replace")})
            try:
                async for chunk in stream:
                    if chunk:
                        yield _line({"data": chunk.decode("utf-8", "replace")})
            except AgentApiError as exc:
                code = "agent_disconnected" if isinstance(exc, AgentDisconnected) else "failed"
                yield _line({"error": {"code": code, "message": str(exc), "details": None}})

    return StreamingResponse(
        body(), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"}
    )
