"""Composition root of the central server: settings -> data dir, key, database, admin token,
FastAPI app with one error handler that renders every error as
``{"error": {"code", "message", "details"}}`` (never a stack trace)."""

from __future__ import annotations

import gc
import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlPoolTimeout
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from pxe import PxeService, PxeSettings
from server import observability
from server.agents import AgentApiServer, BootstrapTokens, start_agent_api
from server.agents.dbstore import DbAgentStore
from server.agents.pki_files import pki_health, record_pki_expiry
from server.api import (
    agents,
    assets,
    boot,
    config,
    events,
    images,
    machines,
    power,
    profiles,
    provisions,
    tokens,
    upgrades,
)
from server.api import registration as registration_api
from server.api.auth import create_token, hash_token
from server.api.deps import Context
from server.api.docs import mount_docs
from server.boot.assets import AssetStore
from server.boot.service import BootPlane
from server.boot.timeline import Retention, TimelineWriter
from server.errors import ApiError, ServiceBusy, from_framework
from server.inventory import listview, migrate
from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.models import ApiToken
from server.inventory.readcache import ReadCache
from server.inventory.secretbox import SecretBox
from server.power.service import PowerService
from server.rollouts.service import RolloutService
from server.settings import ServerSettings
from server.types import EventKind, Role
from server.ui import mount_ui

log = logging.getLogger(__name__)

BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"  # noqa: S105 - a name, not a secret


def prepare_data_dir(settings: ServerSettings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)


def load_secrets(settings: ServerSettings) -> SecretBox:
    if settings.secret_key is not None:
        return SecretBox(settings.secret_key.get_secret_value().encode())
    return SecretBox.from_file(settings.data_dir / "secret.key")


def derived_key(settings: ServerSettings, purpose: bytes) -> bytes:
    """A key for one purpose, derived from the secret key: replicas sharing the secret key
    derive the same one."""
    if settings.secret_key is not None:
        material = settings.secret_key.get_secret_value().encode()
    else:
        load_secrets(settings)  # creates the key file if missing
        material = (settings.data_dir / "secret.key").read_bytes().strip()
    return hmac.new(material, purpose, hashlib.sha256).digest()


def boot_token_key(settings: ServerSettings) -> bytes:
    """The key enrollment tokens of ``/boot.ipxe`` are derived with (``server.agents.tokens``):
    from the secret key, so replicas sharing it hand out the same token for one boot."""
    return derived_key(settings, b"bronze boot token key")


def ensure_admin_token(settings: ServerSettings, db: Database) -> Path | None:
    """Seed the first admin token. With ``BRONZE_ADMIN_TOKEN`` that token is (re)installed under the
    name ``bootstrap-admin``; otherwise, when no active admin token exists, one is generated and
    written to ``<data_dir>/admin.token`` (0600). Returns the file path when one was written."""
    try:
        with db.write() as s:
            if settings.admin_token is not None:
                _seed_admin_token(s, settings.admin_token.get_secret_value())
                return None
            plaintext = _generate_admin_token(s)
    except IntegrityError:
        return None  # another replica seeded it at the same moment
    if plaintext is None:
        return None
    path = settings.data_dir / "admin.token"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(plaintext + "\n")
    os.replace(tmp, path)
    log.info("admin token written path=%s", path)
    return path


def _seed_admin_token(s: Session, seeded: str) -> None:
    """Install ``seeded`` as ``bootstrap-admin`` unless it already is (a rotation replaces it)."""
    row = s.scalar(select(ApiToken).where(ApiToken.name == BOOTSTRAP_TOKEN_NAME))
    if row is not None and row.token_hash == hash_token(seeded) and row.revoked_at is None:
        return
    if row is not None:
        s.delete(row)
        s.flush()
    create_token(
        s,
        name=BOOTSTRAP_TOKEN_NAME,
        role=Role.ADMIN,
        created_by="env:BRONZE_ADMIN_TOKEN",
        token=seeded,
    )
    inventory.record(
        s,
        actor="system",
        kind=EventKind.TOKEN_CREATED,
        message="admin token seeded from BRONZE_ADMIN_TOKEN",
        data={"name": BOOTSTRAP_TOKEN_NAME, "role": "admin"},
    )


def _generate_admin_token(s: Session) -> str | None:
    """A new ``bootstrap-admin`` token when no active admin token exists (its plaintext)."""
    active_admin = s.scalar(
        select(ApiToken.id).where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked_at.is_(None))
    )
    if active_admin is not None:
        return None
    row = s.scalar(select(ApiToken).where(ApiToken.name == BOOTSTRAP_TOKEN_NAME))
    if row is not None:  # revoked bootstrap token: free the name
        s.delete(row)
        s.flush()
    _, plaintext = create_token(s, name=BOOTSTRAP_TOKEN_NAME, role=Role.ADMIN, created_by="system")
    inventory.record(
        s,
        actor="system",
        kind=EventKind.TOKEN_CREATED,
        message="admin token generated on first start",
        data={"name": BOOTSTRAP_TOKEN_NAME, "role": "admin"},
    )
    return plaintext


def install_error_handler(app: FastAPI) -> None:
    """The one exception handler: every error, ours or the framework's, becomes an
    :class:`ApiError` (:func:`server.errors.from_framework`) and is rendered from its class's
    status and code. An unexpected exception is logged here and answered as a bare 500."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        err = from_framework(exc)
        if not isinstance(exc, ApiError | RequestValidationError | StarletteHTTPException):
            log.error(
                "unhandled error path=%s type=%s",
                request.url.path,
                type(exc).__name__,
                exc_info=exc,
            )
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers or None)

    async def db_busy(request: Request, exc: Exception) -> JSONResponse:
        # SQLite's single writer (or an exhausted pool) under a burst is a moment, not a bug:
        # the client is told to come back (firmware and the CLI retry) instead of seeing a 500.
        log.warning("database busy path=%s type=%s", request.url.path, type(exc).__name__)
        err = ServiceBusy()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    for exc_type in (ApiError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, handle)
    for busy in (OperationalError, SqlPoolTimeout):
        app.add_exception_handler(busy, db_busy)


ROUTERS: tuple[APIRouter, ...] = (
    registration_api.router,  # before machines: /machines:import must not match /machines/{key}
    machines.router,
    events.router,
    tokens.router,
    power.router,
    agents.router,
    config.router,
    profiles.router,
    assets.router,
    images.router,
    upgrades.router,
    provisions.router,
    provisions.deprovisions,
    boot.router,
)
"""Every REST resource's router, in the order they appear in OpenAPI."""


@dataclass(frozen=True)
class Parts:
    """What the composition root builds before the app exists (the lifespan starts them)."""

    settings: ServerSettings
    ctx: Context
    power: PowerService
    agent_store: DbAgentStore
    pxe_settings: PxeSettings
    writer: TimelineWriter
    boot_plane: BootPlane
    rollouts: RolloutService


def build_parts(
    settings: ServerSettings, migrate_db: bool | None, pxe_settings: PxeSettings | None
) -> Parts:
    """Data dir, migrations, database, admin token and the services that share them."""
    prepare_data_dir(settings)
    url = settings.effective_database_url
    if settings.migrate_on_start if migrate_db is None else migrate_db:
        migrate.upgrade(url)
    db = Database.connect(url)
    ctx = Context(
        settings=settings,
        db=db,
        secrets=load_secrets(settings),
        cache=ReadCache(settings.api_cache_mb << 20),
    )
    ensure_admin_token(settings, db)
    pxe_settings = pxe_settings if pxe_settings is not None else PxeSettings()
    if pxe_settings.state_dir is None:  # full-mode leases survive a restart
        pxe_settings = pxe_settings.model_copy(update={"state_dir": settings.data_dir / "pxe"})
    writer = TimelineWriter(
        db,
        Retention(
            settings.boot_timeline_per_mac,
            settings.boot_timeline_days,
            settings.boot_timeline_max_rows,
        ),
    )
    power = PowerService(settings, db, ctx.secrets)
    # Agents fetch upgrade images from /assets/ on the boot plane's HTTP address (what their
    # firmware used) unless a load-balanced URL is set or this replica advertises its own.
    asset_base = (
        settings.asset_base_url
        or (pxe_settings.http_base_url if pxe_settings.enabled else None)
        or settings.effective_advertise_url
        or pxe_settings.http_base_url
    )
    return Parts(
        settings=settings,
        ctx=ctx,
        power=power,
        agent_store=DbAgentStore(db, settings.effective_advertise_url),
        pxe_settings=pxe_settings,
        writer=writer,
        boot_plane=BootPlane(
            db, settings, pxe_settings.http_base_url, writer, boot_token_key(settings)
        ),
        rollouts=RolloutService(settings, db, ctx.secrets, power, asset_base),
    )


async def start_boot_plane(app: FastAPI, parts: Parts) -> PxeService | None:
    """The in-process DHCP/TFTP service when enabled. If it cannot start, the REST API stays up
    (degraded) and /healthz and the log say why."""
    cfg = parts.pxe_settings
    if not cfg.enabled:
        return None
    try:
        pxe_service = PxeService(cfg, parts.boot_plane, parts.boot_plane.sink(parts.writer.sink))
        await pxe_service.start()
    except (OSError, ValueError) as exc:
        log.error(
            "boot plane (DHCP/TFTP) not started address=%s interface=%s error=%s",
            cfg.address,
            cfg.interface,
            exc,
        )
        app.state.health["boot_plane"] = f"failed: {exc}"
        return None
    app.state.health["boot_plane"] = "ok"
    return pxe_service


async def start_agents(app: FastAPI, parts: Parts) -> AgentApiServer | None:
    """The agent gRPC API when enabled. If it cannot start, the REST API stays up (degraded);
    agent endpoints answer 409 until restart."""
    settings = parts.settings
    if not settings.agent_api_enabled:
        return None
    try:
        agent_api = await start_agent_api(
            parts.agent_store,
            ca_dir=settings.data_dir / "pki",
            host=settings.agent_host,
            enroll_port=settings.agent_enroll_port,
            session_port=settings.agent_session_port,
            server_names=settings.effective_agent_server_names,
            heartbeat_interval=settings.agent_heartbeat_interval,
            enroll_grace=timedelta(seconds=settings.agent_enroll_grace),
        )
    except (OSError, RuntimeError) as exc:
        log.error(
            "agent API not started host=%s ports=%d,%d error=%s",
            settings.agent_host,
            settings.agent_enroll_port,
            settings.agent_session_port,
            exc,
        )
        app.state.health["agent_api"] = f"failed: {exc}"
        return None
    app.state.health["agent_api"] = "ok"
    app.state.agent_api = agent_api
    app.state.agent_tokens = agent_api.tokens
    parts.rollouts.runner.deliver = agent_api.hub.poll_pending
    agent_api.hub.on_report = parts.rollouts.runner.wake
    record_pki_expiry(parts.ctx.db, agent_api)
    return agent_api


def lifespan_for(parts: Parts) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await parts.power.startup()
        parts.rollouts.start()
        parts.writer.start()
        healer = listview.start_healer(parts.ctx.db)  # views a migration or bulk load left stale
        agent_api = pxe_service = metrics_listener = None
        try:
            app.state.pxe = pxe_service = await start_boot_plane(app, parts)
            agent_api = await start_agents(app, parts)
            metrics_listener = observability.start_listener(app)
            # What is alive now (modules, classes, schemas: ~160k objects) lives for good: keep it
            # out of the collector, whose full passes otherwise stopped every thread for 80-130 ms
            # during a 1,000-machine bulk power operation (bench/power.py: API p99 100 -> 25 ms).
            gc.collect()
            gc.freeze()
            yield
        finally:
            healer.set()
            if metrics_listener is not None:
                metrics_listener.shutdown()
                metrics_listener.server_close()
            if pxe_service is not None:
                await pxe_service.stop()
            app.state.pxe = None
            if agent_api is not None:
                await agent_api.stop()
            app.state.agent_api = None
            await parts.rollouts.stop()
            await parts.power.shutdown()
            parts.writer.stop()
            await parts.ctx.db.aclose()

    return lifespan


async def healthz(request: Request) -> dict[str, Any]:
    """Unauthenticated. ``degraded``: the REST API serves, but a plane that should run did
    not start, or the fleet CA / agent server certificate expires within 30 days (component
    ``pki``; the reason is here and in the log); 200 either way, so a load balancer keeps
    the replica's REST API in rotation."""
    parts: dict[str, str] = dict(request.app.state.health)
    if request.app.state.agent_api is not None:
        parts["pki"] = pki_health(request.app.state.agent_api)
    failed = any(v.startswith(("failed", "expiring")) for v in parts.values())
    return {"status": "degraded" if failed else "ok", "components": parts}


def create_app(
    settings: ServerSettings,
    *,
    migrate_db: bool | None = None,
    pxe_settings: PxeSettings | None = None,
) -> FastAPI:
    parts = build_parts(settings, migrate_db, pxe_settings)
    app = FastAPI(
        title="bronze",
        version="0.1.0",
        openapi_url="/openapi.json",
        docs_url=None,  # served from the package (server/api/docs.py), not a CDN
        redoc_url=None,
        lifespan=lifespan_for(parts),
    )
    mount_docs(app)
    app.state.ctx = parts.ctx
    app.state.power = parts.power
    app.state.agent_store = parts.agent_store
    app.state.agent_api = None  # set by the lifespan when BRONZE_AGENT_API_ENABLED
    app.state.agent_tokens = BootstrapTokens(parts.agent_store)
    app.state.boot_plane = parts.boot_plane
    app.state.assets = AssetStore(settings.data_dir / "assets", settings.boot_asset_max_bytes)
    app.state.pxe = None  # the in-process PxeService when BRONZE_PXE_ENABLED
    # What started: "ok", "disabled" or "failed: why" (set by the lifespan).
    app.state.health = {"agent_api": "disabled", "boot_plane": "disabled"}
    install_error_handler(app)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    for router in ROUTERS:
        app.include_router(router)
    observability.install(app)
    mount_ui(app, derived_key(settings, b"bronze ui csrf key"))
    return app
