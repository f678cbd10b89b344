"""Shared FastAPI dependencies: the server context and the authenticated principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from server.api.auth import Principal, authenticate, hash_token
from server.errors import Forbidden, Unauthenticated
from server.inventory.db import Database
from server.inventory.readcache import Generations, ReadCache
from server.inventory.secretbox import SecretBox
from server.settings import ServerSettings
from server.types import Role


@dataclass
class Context:
    """Everything a request handler may need; built once in the composition root."""

    settings: ServerSettings
    db: Database
    secrets: SecretBox
    cache: ReadCache


async def context(request: Request) -> Context:
    """(async: a plain attribute read must not cost a thread-pool hop)"""
    ctx: Context = request.app.state.ctx
    return ctx


async def _principal(request: Request) -> Principal:
    """Async on purpose: with a cached principal, the check costs one counter read and no
    thread-pool hop (a hop costs more than the whole check): SQLite's counter read (~6 us, a
    local page-cache read on a connection of its own) runs inline, PostgreSQL's is awaited on an
    async connection."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated()
    ctx: Context = request.app.state.ctx
    db = ctx.db
    gens = await db.generations_async()
    request.state.generations = gens
    key = hash_token(token)
    principal: Principal | None = ctx.cache.principal(key, gens.tokens)
    if principal is None:

        def load() -> Principal | None:
            with db.read() as session:
                return authenticate(session, token)

        principal = await run_in_threadpool(load)
        if principal is None:
            raise Unauthenticated()
        ctx.cache.put_principal(key, gens.tokens, principal)
    return principal


def generations(request: Request) -> Generations:
    """The change counters this request read while authenticating (before reading any data)."""
    gens: Generations = request.state.generations
    return gens


def require(role: Role, action: str) -> Callable[[Request], Awaitable[Principal]]:
    """Dependency: the caller's token must carry at least ``role``."""

    async def dep(request: Request) -> Principal:
        principal = await _principal(request)
        if not principal.can(role):
            raise Forbidden(role=principal.role.value, action=action)
        return principal

    return dep


reader = require(Role.READER, "read")
operator = require(Role.OPERATOR, "change machines")
admin = require(Role.ADMIN, "manage tokens")
boot = require(Role.BOOT, "use the boot plane API")
