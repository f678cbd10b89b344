"""The HTTP side of observability: the request-id and latency middleware, ``GET /metrics`` and
the optional separate metrics listener (``docs/metrics.md``)."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.deps import reader
from server.errors import Unauthenticated
from server.logs import REQUEST_ID, sane_request_id
from server.metrics import HTTP_SECONDS, registry_for

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


class RequestContext:
    """Pure ASGI middleware: gives every HTTP request an id (the client's ``X-Request-ID`` when
    sane, else a new one), makes it the :data:`server.logs.REQUEST_ID` of everything the request
    does (log lines, events, tasks it starts), echoes it in the response, and times the request
    under its route template (``/api/v1/machines/{key}``, never the raw path: a label per machine
    would grow without bound)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                rid = sane_request_id(value.decode("latin-1"))
                break
        rid = rid or uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
            HTTP_SECONDS.labels(scope["method"], route_of(scope), str(status)).observe(
                time.perf_counter() - start
            )


def route_of(scope: Scope) -> str:
    """The template of the route that answered (set by the router in ``scope``), a mount's
    prefix for mounted apps (static files), or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    root = scope.get("root_path", "")
    if root:
        return root + "/{path}"
    return "unmatched"


def install(app: FastAPI) -> None:
    """Middleware, ``/metrics`` on the REST listener, and the app's metrics registry."""
    app.state.metrics_registry = registry_for(app)
    app.add_middleware(RequestContext)
    app.add_api_route(
        "/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False, tags=["metrics"]
    )


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus exposition. ``BRONZE_METRICS_TOKEN`` set: that bearer token only; unset: any
    API token of role reader or above."""
    settings = request.app.state.ctx.settings
    if settings.metrics_token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        want = settings.metrics_token.get_secret_value()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), want):
            raise Unauthenticated()
    else:
        await reader(request)
    registry: CollectorRegistry = request.app.state.metrics_registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def start_listener(app: FastAPI) -> Any | None:
    """The separate ``/metrics`` listener (``BRONZE_METRICS_PORT``), or None. No token there:
    whoever can reach ``BRONZE_METRICS_HOST:PORT`` may scrape (bind it to a scrape network)."""
    from prometheus_client import start_http_server

    settings = app.state.ctx.settings
    if settings.metrics_port is None:
        return None
    server, _thread = start_http_server(
        settings.metrics_port, settings.metrics_host, registry=app.state.metrics_registry
    )
    log.info("metrics listener host=%s port=%d", settings.metrics_host, settings.metrics_port)
    return server
