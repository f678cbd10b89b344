"""The boot plane over HTTP.

No authentication (firmware cannot send a bearer token):

* ``GET /boot.ipxe?mac=..&uuid=..&arch=..&boot=..``: the machine's iPXE script
  (``server.boot.service``);
* ``GET|HEAD /assets/{name}``: boot assets, with single ``Range`` support (206/416).

Role ``boot`` (a remote ``bronze pxe``; admin too): ``GET /api/v1/boot/decide`` (the
``pxe.HttpBackend`` contract of docs/pxe.md) and ``POST /api/v1/boot/timeline``.
Role ``reader``: ``GET /api/v1/boot/timeline?mac=`` and ``GET /api/v1/machines/{key}/timeline``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from pxe import Arch, TimelineKind
from server.api.auth import Principal
from server.api.deps import Context, boot, context, reader
from server.api.schemas import Mac, Strict
from server.boot import timeline
from server.boot.assets import (
    AssetError,
    AssetStore,
    ByteRange,
    Unsatisfiable,
    check_name,
    parse_range,
)
from server.boot.plan import BOOT_ID_RE
from server.boot.service import AgentEndpoints, BootPlane, UnsafeStoredProfile
from server.boot.timeline import Row
from server.errors import Invalid, NotFound, RangeNotSatisfiable, UnsafeProfile
from server.inventory import machines as inventory
from server.inventory.models import BootAsset
from server.inventory.validation import normalize_mac

log = logging.getLogger(__name__)
router = APIRouter(tags=["boot"])

CHUNK = 256 * 1024
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def _plane(request: Request) -> BootPlane:
    plane: BootPlane = request.app.state.boot_plane
    return plane


def _mac(value: str) -> str:
    try:
        return normalize_mac(value)
    except ValueError as exc:
        raise Invalid(message=f"mac: {exc}", details={"field": "mac"}) from None


def _uuid(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _UUID_RE.fullmatch(value):
        raise Invalid(message="uuid: not an SMBIOS UUID", details={"field": "uuid"})
    # NOTE: QEMU without -uuid, OVMF and many boards report a placeholder UUID (all zeros or all
    # ones); it identifies nothing, and recording it would collide between machines.
    if value.strip("0-") == "" or value.lower().strip("f-") == "":
        return None
    return value.lower()


def _arch(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return Arch(value).value
    except ValueError:
        raise Invalid(
            message=f"arch: one of {', '.join(a.value for a in Arch)}", details={"field": "arch"}
        ) from None


def _agent_endpoints(request: Request, ctx: Context) -> AgentEndpoints:
    host = ctx.settings.effective_agent_server_names[0]
    api = request.app.state.agent_api
    enroll = api.enroll_port if api is not None else ctx.settings.agent_enroll_port
    session = api.session_port if api is not None else ctx.settings.agent_session_port
    return AgentEndpoints(session=f"{host}:{session}", enroll=f"{host}:{enroll}")


@router.get("/boot.ipxe", response_class=PlainTextResponse)
async def boot_script(
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    mac: Annotated[str, Query(max_length=32)],
    uuid: Annotated[str | None, Query(max_length=36)] = None,
    arch: Annotated[str | None, Query(max_length=16)] = None,
    boot: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    """The iPXE script for the machine with this MAC (firmware; no authentication). ``boot``:
    the DHCP transaction the URL came from; an enrollment token is handed out only for the boot
    and to the address DHCP recorded for the MAC (docs/boot.md)."""
    m, u, a = _mac(mac), _uuid(uuid), _arch(arch)
    if boot is not None and not BOOT_ID_RE.match(boot):
        raise Invalid(message="boot: 1-16 lower-case hex digits", details={"field": "boot"})
    try:
        script = await _plane(request).script(
            m,
            smbios_uuid=u,
            arch=a,
            client_ip=request.client.host if request.client else None,
            tokens=request.app.state.agent_tokens,
            agent=_agent_endpoints(request, ctx),
            boot=boot,
        )
    except UnsafeStoredProfile as exc:
        raise UnsafeProfile(
            message=str(exc), details={"profile": exc.profile, "field": exc.field}
        ) from None
    # The script may carry a one-time enrollment token: never cache it anywhere.
    return PlainTextResponse(script.text, headers={"Cache-Control": "no-store"})


# -- assets for firmware ------------------------------------------------------------------------


class AssetResponse(Response):
    """Streams one byte range of an open file and reports how many bytes really left."""

    def __init__(
        self,
        fd: int,
        size: int,
        rng: ByteRange | None,
        head: bool,
        on_done: Callable[[int, bool], None],
    ) -> None:
        self.fd, self.rng, self.head, self.on_done = fd, rng, head, on_done
        self.start, length = (rng.start, rng.length) if rng else (0, size)
        self.length = length
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(length)}
        if rng is not None:
            headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{size}"
        super().__init__(
            status_code=206 if rng else 200, headers=headers, media_type="application/octet-stream"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent, complete = 0, False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if not self.head:
                pos, end = self.start, self.start + self.length
                while pos < end:
                    chunk = await anyio.to_thread.run_sync(
                        os.pread, self.fd, min(CHUNK, end - pos), pos
                    )
                    if not chunk:
                        break  # the file shrank under us: stop short (the client sees it)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    pos += len(chunk)
                    sent += len(chunk)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            complete = sent == (0 if self.head else self.length)
        finally:
            os.close(self.fd)
            self.on_done(sent, complete)


@router.get("/assets/{name}", response_class=Response)
async def serve_asset(
    name: str, request: Request, ctx: Annotated[Context, Depends(context)]
) -> Response:
    """A boot asset for firmware (no authentication); one ``Range`` honoured (206/416)."""
    return await _serve(name, request, ctx)


@router.head("/assets/{name}", response_class=Response)
async def head_asset(
    name: str, request: Request, ctx: Annotated[Context, Depends(context)]
) -> Response:
    """Headers of ``GET /assets/{name}`` (size, ranges), no body."""
    return await _serve(name, request, ctx)


async def _serve(name: str, request: Request, ctx: Context) -> Response:
    try:
        check_name(name)
    except AssetError as exc:
        raise Invalid(message=f"name: {exc.reason}", details={"field": "name"}) from None

    def known() -> bool:
        with ctx.db.read() as s:
            return s.get(BootAsset, name) is not None

    if not await run_in_threadpool(known):
        raise NotFound(kind="asset", key=name)
    store: AssetStore = request.app.state.assets
    try:
        fd, size = store.open(name)
    except OSError:
        log.error("boot asset listed but not readable asset=%s dir=%s", name, store.root)
        raise NotFound(kind="asset", key=name) from None
    try:
        rng = parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        os.close(fd)
        raise RangeNotSatisfiable(size=size) from None
    plane = _plane(request)
    ip = request.client.host if request.client else None
    head = request.method == "HEAD"

    def done(sent: int, complete: bool) -> None:
        mac, kind = plane.steps.asset_served(ip, name) if ip else (None, timeline.HttpKind.ASSET)
        if mac is None or head:
            return
        detail: dict[str, Any] = {
            "asset": name,
            "bytes": sent,
            "size": size,
            "complete": complete,
            "status": 206 if rng else 200,
        }
        if rng is not None:
            detail["range"] = f"{rng.start}-{rng.end}"
        plane.timeline.submit(Row(mac, kind.value, time.time(), "server", ip, detail))

    return AssetResponse(fd, size, rng, head, done)


# -- role boot: decisions and timeline ingestion ------------------------------------------------


@router.get("/api/v1/boot/decide")
async def boot_decide(
    request: Request,
    _: Annotated[Principal, Depends(boot)],
    mac: Annotated[str, Query(max_length=32)],
    arch: Annotated[str | None, Query(max_length=16)] = None,
    ipxe: bool = False,
    uuid: Annotated[str | None, Query(max_length=36)] = None,
    ip: Annotated[str | None, Query(max_length=45)] = None,
) -> dict[str, Any]:
    """``pxe.HttpBackend``'s question (docs/pxe.md); 404 = unknown machine, no discovery."""
    m = _mac(mac)
    _arch(arch), _uuid(uuid)
    decision = await run_in_threadpool(_plane(request).decide_sync, m)
    if decision is None:
        raise NotFound(kind="machine with MAC", key=m)
    return {
        "known": decision.known,
        "allow_boot": decision.allow_boot,
        "static_ip": decision.static_ip,
        "hostname": decision.hostname,
    }


PXE_KINDS = frozenset(k.value for k in TimelineKind)


class TimelineEventIn(Strict):
    kind: str
    mac: Mac
    client: str | None = Field(default=None, max_length=64, pattern=r"^[0-9A-Fa-f.:\[\]]+$")
    detail: dict[str, Any] = Field(default_factory=dict)
    at: float

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in PXE_KINDS:
            raise ValueError(f"one of {', '.join(sorted(PXE_KINDS))}")
        return v

    @field_validator("detail")
    @classmethod
    def _detail(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v)) > 2048:
            raise ValueError("detail larger than 2048 bytes of JSON")
        return v

    @field_validator("at")
    @classmethod
    def _at(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError("a positive UNIX time")
        return v


class TimelineBatch(Strict):
    events: list[TimelineEventIn] = Field(max_length=1000)


@router.post("/api/v1/boot/timeline", status_code=202)
def ingest_timeline(
    body: TimelineBatch, request: Request, who: Annotated[Principal, Depends(boot)]
) -> dict[str, int]:
    """Events from a remote ``bronze pxe`` (batched; queued, written in the background)."""
    plane = _plane(request)
    writer = plane.timeline
    now = time.time()
    for e in body.events:
        plane.observe(e.mac, e.kind, e.detail)
    accepted = sum(
        writer.submit(
            Row(
                e.mac,
                e.kind,
                min(e.at, now),
                f"pxe:{who.name}",
                e.client,
                timeline._plain(e.detail),
            )
        )
        for e in body.events
    )
    return {"accepted": accepted, "dropped": len(body.events) - accepted}


# -- reading the timeline -----------------------------------------------------------------------

Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/api/v1/boot/timeline")
def mac_timeline(
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    mac: Annotated[str, Query(max_length=32)],
    limit: Limit = 200,
) -> dict[str, Any]:
    """Any MAC's boot steps (also unknown machines), oldest first."""
    m = _mac(mac)
    with ctx.db.read() as s:
        return {"mac": m, "items": timeline.read(s, [m], limit)}


@router.get("/api/v1/machines/{key}/timeline")
def machine_timeline(
    key: str,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    limit: Limit = 200,
    events: bool = False,
) -> dict[str, Any]:
    """The machine's boot steps over all its MACs, oldest first; ``events=true`` merges in its
    provisioning/upgrade steps, enrollment, agent and power events (``source: event``)."""
    with ctx.db.read() as s:
        m = inventory.get_machine(s, key)
        macs = [n.mac for n in m.nics]
        items = timeline.read(s, macs, limit)
        if events:
            items = timeline.with_events(s, m.id, items, limit)
        return {"machine": m.name, "macs": macs, "items": items}
